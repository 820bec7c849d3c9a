"""The reference for `aion bench shards`: pyarrow writing the same rows to the same layout.

usage: shards_pyarrow_bench.py ROWS_JSONL OUT_DIR
Prints `rows_per_cpu_second <n>` for building the table and writing the Hive-partitioned zstd
Parquet files (parsing the JSON input is not timed).
"""
import json
import sys
import time

import pyarrow as pa
import pyarrow.dataset as ds


def main():
    rows_path, out = sys.argv[1], sys.argv[2]
    with open(rows_path) as f:
        rows = [json.loads(line) for line in f]
    start = time.process_time()
    table = pa.Table.from_pylist(rows)
    ds.write_dataset(
        table,
        out,
        format="parquet",
        partitioning=["tenant_id", "date"],
        partitioning_flavor="hive",
        file_options=ds.ParquetFileFormat().make_write_options(compression="zstd"),
        existing_data_behavior="overwrite_or_ignore",
        use_threads=False,
    )
    cpu = time.process_time() - start
    print(f"rows_per_cpu_second {len(rows) / max(cpu, 1e-9):.0f}")


if __name__ == "__main__":
    main()
