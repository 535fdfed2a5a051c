"""Presigns a GetObject URL for Orca's edge with boto3.

Usage: s3_presign.py EDGE BUCKET KEY [s3v4|default] [RESPONSE_CONTENT_DISPOSITION]

`s3v4` (the default here) asks for SigV4 query parameters (X-Amz-Algorithm, X-Amz-Signature,
...); `default` takes what boto3 does unasked, which for us-east-1 is the legacy SigV2 form
(AWSAccessKeyId, Signature, Expires). RESPONSE_CONTENT_DISPOSITION adds that override to the
signed parameters.
Prints {"url": "...", "style": "v4" | "v2"}.
"""

import sys

from s3util import client, emit, fail


def main():
    if len(sys.argv) not in (4, 5, 6):
        fail("usage: s3_presign.py EDGE BUCKET KEY [s3v4|default] [RESPONSE_CONTENT_DISPOSITION]")
    edge, bucket, key = sys.argv[1:4]
    signature = sys.argv[4] if len(sys.argv) >= 5 else "s3v4"
    params = {"Bucket": bucket, "Key": key}
    if len(sys.argv) == 6:
        params["ResponseContentDisposition"] = sys.argv[5]
    if signature == "s3v4":
        s3 = client(edge, signature_version="s3v4")
    elif signature == "default":
        s3 = client(edge)
    else:
        fail(f"unknown signature {signature!r}")
    url = s3.generate_presigned_url(
        "get_object", Params=params, ExpiresIn=3600
    )
    if "X-Amz-Signature=" in url:
        style = "v4"
    elif "Signature=" in url and "AWSAccessKeyId=" in url:
        style = "v2"
    else:
        fail(f"not a presigned URL: {url}")
    if signature == "s3v4" and style != "v4":
        fail(f"asked for SigV4, got {url}")
    emit({"url": url, "style": style})


if __name__ == "__main__":
    main()
