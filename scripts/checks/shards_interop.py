"""Reads a shard table with DuckDB and with pyarrow and compares both with `aion sql`'s rows.

usage: shards_interop.py SHARD_ROOT AION_SQL_JSONL
AION_SQL_JSONL: the output of
  aion sql --format json "SELECT tenant_id, date, event_id, instruction, response, confidence,
                                 fallback, latency_ms, ndcg, entities FROM shards ORDER BY event_id"
Exits non-zero with the first difference.
"""
import json
import sys

import duckdb
import pyarrow.dataset as ds

COLUMNS = ["tenant_id", "date", "event_id", "instruction", "response", "confidence", "fallback",
           "latency_ms", "ndcg", "entities"]


def normalise(row):
    # Arrow's JSON writer leaves out null values; a missing key is a null.
    return tuple(tuple(v) if isinstance(v, list) else v for v in (row.get(c) for c in COLUMNS))


def main():
    root, expected_path = sys.argv[1], sys.argv[2]
    with open(expected_path) as f:
        expected = [normalise(json.loads(line)) for line in f if line.strip()]

    dataset = ds.dataset(root, format="parquet", partitioning="hive")
    table = dataset.to_table(columns=COLUMNS).sort_by("event_id")
    from_arrow = [normalise(r) for r in table.to_pylist()]
    # pyarrow infers the date directory as a date; compare as text.
    from_arrow = [tuple(str(v) if i == 1 else v for i, v in enumerate(r)) for r in from_arrow]

    con = duckdb.connect()
    rows = con.execute(
        f"SELECT {', '.join(COLUMNS)} FROM read_parquet(?, hive_partitioning = true) ORDER BY event_id",
        [f"{root}/*/*/*.parquet"],
    ).fetchall()
    from_duckdb = [normalise(dict(zip(COLUMNS, r))) for r in rows]
    from_duckdb = [tuple(str(v) if i == 1 else v for i, v in enumerate(r)) for r in from_duckdb]

    for name, got in [("pyarrow", from_arrow), ("duckdb", from_duckdb)]:
        if len(got) != len(expected):
            sys.exit(f"{name}: {len(got)} rows, aion sql: {len(expected)}")
        for a, b in zip(got, expected):
            if a != b:
                sys.exit(f"{name} differs from aion sql:\n  {a}\n  {b}")
    print(f"ok: {len(expected)} rows identical in aion sql, pyarrow and duckdb")


if __name__ == "__main__":
    main()
