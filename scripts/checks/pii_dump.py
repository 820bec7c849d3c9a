"""Every value of every Parquet table under a state directory, read with DuckDB (an outside
reader) and cast to text: one JSON line {"table", "column", "value"} per cell (nested values as
DuckDB prints them, so every string inside them is searched too).

usage: pii_dump.py STATE_DIR TABLE...
"""
import glob
import json
import sys

import duckdb


def main():
    root = sys.argv[1]
    con = duckdb.connect()
    for table in sys.argv[2:]:
        files = glob.glob(f"{root}/{table}/**/*.parquet", recursive=True)
        if not files:
            print(json.dumps({"table": table, "column": None, "value": None}))
            continue
        cursor = con.execute(
            "SELECT COLUMNS(*)::VARCHAR FROM read_parquet(?, hive_partitioning = true, union_by_name = true)",
            [files])
        columns = [d[0] for d in cursor.description]
        for row in cursor.fetchall():
            for column, value in zip(columns, row):
                if value is not None:
                    print(json.dumps({"table": table, "column": column, "value": value}, ensure_ascii=False))


if __name__ == "__main__":
    main()
