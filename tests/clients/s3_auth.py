"""Runs signed S3 operations with boto3 against Orca's edge and reports what each got.

Usage: s3_auth.py ENDPOINT ACCESS_KEY SECRET STYLE OPS_JSON

STYLE is `path` or `virtual`. With `virtual`, ENDPOINT's host (e.g. orca.test) and every
`BUCKET.host` resolve to 127.0.0.1 inside this script, so boto3 sends virtual-hosted requests
(`Host: bucket.orca.test:PORT`, path `/key`) without a DNS server.

OPS_JSON is a list of operations, each a JSON object:
  {"op": "get", "bucket": B, "key": K, "range": "bytes=a-b"?}  -> {"sha256": hex, "len": n}
  {"op": "head", "bucket": B, "key": K}                         -> {"len": n, "etag": e}
  {"op": "list", "bucket": B, "prefix": P}                      -> {"keys": [...]}
  {"op": "list_buckets"}                                        -> {"buckets": [...]}
  {"op": "presign", "bucket": B, "key": K, "expires": s}        -> {"url": u}
  {"op": "get_skewed", "bucket": B, "key": K, "minutes": m}     -> as get, signed m minutes ago
A refused operation gives {"error": CODE, "status": HTTP status}.
Prints {"results": [...]} (one result per operation, in order).
"""

import datetime
import hashlib
import json
import socket
import sys

import botocore.auth
from botocore.exceptions import ClientError

try:
    import botocore.crt.auth as crt_auth
except ImportError:
    crt_auth = None

from s3util import emit, fail

import boto3
from botocore.config import Config


def resolve_locally(suffix):
    """Makes `suffix` and every name under it resolve to 127.0.0.1 in this process."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if isinstance(host, str) and (host == suffix or host.endswith("." + suffix)):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo


def client(endpoint, access_key, secret, style):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": style},
            retries={"total_max_attempts": 1},
            connect_timeout=10,
            read_timeout=60,
        ),
    )


def run(s3, op):
    kind = op["op"]
    if kind in ("get", "get_skewed"):
        args = {"Bucket": op["bucket"], "Key": op["key"]}
        if op.get("range"):
            args["Range"] = op["range"]
        if kind == "get_skewed":
            # botocore signs with awscrt when it is installed (as with the aws CLI here), else
            # in Python: turn both clocks back.
            modules = [botocore.auth] + ([crt_auth] if crt_auth else [])
            delta = datetime.timedelta(minutes=op["minutes"])
            saved = [m.get_current_datetime for m in modules]
            for m, real in zip(modules, saved):
                m.get_current_datetime = lambda real=real, **kw: real(**kw) - delta
            try:
                body = s3.get_object(**args)["Body"].read()
            finally:
                for m, real in zip(modules, saved):
                    m.get_current_datetime = real
        else:
            body = s3.get_object(**args)["Body"].read()
        return {"sha256": hashlib.sha256(body).hexdigest(), "len": len(body)}
    if kind == "head":
        r = s3.head_object(Bucket=op["bucket"], Key=op["key"])
        return {"len": r["ContentLength"], "etag": r["ETag"]}
    if kind == "list":
        r = s3.list_objects_v2(Bucket=op["bucket"], Prefix=op.get("prefix", ""))
        return {"keys": [o["Key"] for o in r.get("Contents", [])]}
    if kind == "list_buckets":
        return {"buckets": [b["Name"] for b in s3.list_buckets()["Buckets"]]}
    if kind == "presign":
        url = s3.generate_presigned_url(
            "get_object",
            Params={"Bucket": op["bucket"], "Key": op["key"]},
            ExpiresIn=op["expires"],
        )
        return {"url": url}
    fail(f"unknown op {kind!r}")
    return None


def main():
    if len(sys.argv) != 6:
        fail("usage: s3_auth.py ENDPOINT ACCESS_KEY SECRET STYLE OPS_JSON")
    endpoint, access_key, secret, style, ops = sys.argv[1:6]
    if style == "virtual":
        host = endpoint.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
        resolve_locally(host)
    elif style != "path":
        fail(f"unknown style {style!r}")
    s3 = client(endpoint, access_key, secret, style)
    results = []
    for op in json.loads(ops):
        try:
            results.append(run(s3, op))
        except ClientError as e:
            results.append(
                {
                    "error": e.response.get("Error", {}).get("Code", ""),
                    "status": e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0),
                }
            )
    emit({"results": results})


if __name__ == "__main__":
    main()
