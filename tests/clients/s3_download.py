"""boto3 download_file through Orca with small multipart settings (parallel ranged GETs).

Usage: s3_download.py EDGE BUCKET KEY DEST
Prints {"sha256": hex of DEST, "size": n}.
"""

import hashlib
import sys

from boto3.s3.transfer import TransferConfig

from s3util import client, emit, fail

MIB = 1024 * 1024


def main():
    if len(sys.argv) != 5:
        fail("usage: s3_download.py EDGE BUCKET KEY DEST")
    edge, bucket, key, dest = sys.argv[1:]
    config = TransferConfig(
        multipart_threshold=MIB,
        multipart_chunksize=MIB,
        max_concurrency=8,
        preferred_transfer_client="classic",
    )
    client(edge).download_file(bucket, key, dest, Config=config)
    with open(dest, "rb") as f:
        data = f.read()
    emit({"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})


if __name__ == "__main__":
    main()
