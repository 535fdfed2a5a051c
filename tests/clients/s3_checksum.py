"""Full-object checksums through Orca.

Usage: s3_checksum.py ORIGIN EDGE BUCKET KEY FILE RANGE_START RANGE_END

Uploads FILE to the origin with put_object(ChecksumAlgorithm='SHA256'), then through Orca:
get_object(ChecksumMode='ENABLED') of the whole object (boto3 validates the checksum while
reading) and of the range RANGE_START-RANGE_END (no whole-object checksum on a part).
Prints {"put_checksum", "whole_sha256", "whole_checksum", "range_sha256", "range_checksum"}.
"""

import base64
import hashlib
import sys

from s3util import check, client, emit, fail


def main():
    if len(sys.argv) != 8:
        fail("usage: s3_checksum.py ORIGIN EDGE BUCKET KEY FILE RANGE_START RANGE_END")
    origin, edge, bucket, key, path, start, end = sys.argv[1:]
    with open(path, "rb") as f:
        data = f.read()
    put = client(origin).put_object(
        Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256"
    )
    want = base64.b64encode(hashlib.sha256(data).digest()).decode()
    check(put.get("ChecksumSHA256") == want, f"origin stored {put.get('ChecksumSHA256')}")

    orca = client(edge)
    whole = orca.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    body = whole["Body"].read()  # raises FlexibleChecksumError on a mismatch
    part = orca.get_object(
        Bucket=bucket, Key=key, ChecksumMode="ENABLED", Range=f"bytes={start}-{end}"
    )
    part_body = part["Body"].read()
    check(part["ResponseMetadata"]["HTTPStatusCode"] == 206, "ranged get_object not 206")
    emit(
        {
            "put_checksum": want,
            "whole_sha256": hashlib.sha256(body).hexdigest(),
            "whole_checksum": whole.get("ChecksumSHA256"),
            "range_sha256": hashlib.sha256(part_body).hexdigest(),
            "range_checksum": part.get("ChecksumSHA256"),
        }
    )


if __name__ == "__main__":
    main()
