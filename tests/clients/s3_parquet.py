"""A Parquet file written with pyarrow, read back through Orca with pyarrow's S3FileSystem.

Usage:
  s3_parquet.py write PATH                 writes the table to PATH (several row groups)
  s3_parquet.py read EDGE BUCKET KEY       reads it through Orca and compares with the table

`write` prints {"rows", "row_groups", "size"}; `read` prints {"rows", "row_groups", "equal"}
and fails unless the table read equals the one written.
"""

import hashlib
import sys

import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq

ROWS = 8000
ROW_GROUP = 1500


def fail(message):
    sys.stderr.write(f"{sys.argv[0]}: {message}\n")
    sys.exit(1)


def table():
    """A deterministic table (integers, floats, text with unicode, nullable values, and a
    payload that makes the file span several 1 MiB chunks)."""
    ids = list(range(ROWS))
    payload = [hashlib.sha256(str(i).encode()).hexdigest() * 4 for i in ids]
    return pa.table(
        {
            "payload": pa.array(payload),
            "id": pa.array(ids, type=pa.int64()),
            "value": pa.array([i * 0.5 - 7.25 for i in ids], type=pa.float64()),
            "name": pa.array([f"näme-{i:05d}-{'x' * (i % 37)}" for i in ids]),
            "maybe": pa.array([None if i % 7 == 0 else i * 3 for i in ids], type=pa.int32()),
        }
    )


def emit(result):
    import json

    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    sys.exit(0)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "write":
        path = sys.argv[2]
        pq.write_table(table(), path, row_group_size=ROW_GROUP, compression="none")
        meta = pq.ParquetFile(path).metadata
        with open(path, "rb") as f:
            size = len(f.read())
        emit({"rows": meta.num_rows, "row_groups": meta.num_row_groups, "size": size})
    if len(sys.argv) == 5 and sys.argv[1] == "read":
        edge, bucket, key = sys.argv[2:]
        scheme, _, host = edge.partition("://")
        fs = pyarrow.fs.S3FileSystem(
            endpoint_override=host,
            scheme=scheme,
            access_key="test",
            secret_key="test",
            region="us-east-1",
        )
        path = f"{bucket}/{key}"
        got = pq.read_table(path, filesystem=fs)
        meta = pq.ParquetFile(path, filesystem=fs).metadata
        want = table()
        if not got.equals(want):
            fail(f"the table read through Orca differs: {got.schema} {got.num_rows} rows")
        emit({"rows": got.num_rows, "row_groups": meta.num_row_groups, "equal": True})
    fail("usage: s3_parquet.py write PATH | s3_parquet.py read EDGE BUCKET KEY")


if __name__ == "__main__":
    main()
