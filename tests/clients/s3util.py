"""Shared helpers of the client scripts that tests/s3_surface.rs runs with `python3 path args...`.

Every script prints one JSON object on stdout and exits 0, or prints a message on stderr and
exits 1. Credentials and region come from the environment the Rust test sets (test / test /
us-east-1); retries are off so an error from Orca is never hidden by a second attempt.
"""

import json
import sys

import boto3
from botocore.config import Config


def client(endpoint, **config):
    """A path-style boto3 S3 client for `endpoint` (Orca's edge or moto) without retries;
    `config` adds botocore Config options (e.g. signature_version)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": 1},
            connect_timeout=10,
            read_timeout=120,
            **config,
        ),
    )


def count_sends(s3):
    """Counts the HTTP requests `s3` sends, per operation name (retries included)."""
    counts = {}

    def on_send(event_name, **_):
        op = event_name.rsplit(".", 1)[-1]
        counts[op] = counts.get(op, 0) + 1

    s3.meta.events.register("before-send.s3", on_send)
    return counts


def fail(message):
    sys.stderr.write(f"{sys.argv[0]}: {message}\n")
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def emit(result):
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    sys.exit(0)
