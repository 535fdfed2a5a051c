"""GETs objects through Orca with boto3 get_object and reports their sha256.

Usage: s3_get_keys.py EDGE BUCKET KEY...
Prints {"sha256": [hex per key, in argument order], "sizes": [...]}.
"""

import hashlib
import sys

from s3util import client, emit, fail


def main():
    if len(sys.argv) < 4:
        fail("usage: s3_get_keys.py EDGE BUCKET KEY...")
    edge, bucket, keys = sys.argv[1], sys.argv[2], sys.argv[3:]
    s3 = client(edge)
    digests, sizes = [], []
    for key in keys:
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as e:  # noqa: BLE001 - report which key failed
            fail(f"get_object({key!r}): {e}")
        digests.append(hashlib.sha256(body).hexdigest())
        sizes.append(len(body))
    emit({"sha256": digests, "sizes": sizes})


if __name__ == "__main__":
    main()
