"""Listings through Orca equal the same listings straight from the origin.

Usage: s3_listing.py EDGE ORIGIN BUCKET MISSING_BUCKET

Pages ListObjectsV2 (MaxKeys=4; with and without Delimiter and Prefix; StartAfter; FetchOwner;
EncodingType=url) and ListObjects v1 (Marker pagination) through Orca's edge and straight
against the origin, and compares every page: keys, sizes, ETags, CommonPrefixes, truncation.
Also HeadBucket (200, and 404 for MISSING_BUCKET) and GetBucketLocation through Orca.
Prints {"orca_sends": {op: n}, "pages": {case: n}, "keys": n}.
"""

import sys
import urllib.parse

from botocore.exceptions import ClientError

from s3util import check, client, count_sends, emit, fail

MAX_PAGES = 100


def page_view(r):
    """What must be equal between Orca's page and the origin's page."""
    return {
        "contents": [
            (o["Key"], o["Size"], o["ETag"], o.get("Owner", {}).get("ID"))
            for o in r.get("Contents", [])
        ],
        "prefixes": [p["Prefix"] for p in r.get("CommonPrefixes", [])],
        "truncated": r.get("IsTruncated"),
        "key_count": r.get("KeyCount"),
        "encoding": r.get("EncodingType"),
        "prefix": r.get("Prefix"),
        "delimiter": r.get("Delimiter"),
    }


def pages_v2(s3, **kw):
    pages, token = [], None
    for _ in range(MAX_PAGES):
        args = dict(kw)
        if token is not None:
            args["ContinuationToken"] = token
        r = s3.list_objects_v2(**args)
        pages.append(r)
        if not r.get("IsTruncated"):
            return pages
        token = r.get("NextContinuationToken")
        check(token, f"truncated v2 page without NextContinuationToken: {kw}")
    fail(f"more than {MAX_PAGES} pages: {kw}")


def pages_v1(s3, **kw):
    pages, marker = [], None
    for _ in range(MAX_PAGES):
        args = dict(kw)
        if marker is not None:
            args["Marker"] = marker
        r = s3.list_objects(**args)
        pages.append(r)
        if not r.get("IsTruncated"):
            return pages
        # NextMarker comes with a delimiter; without one the last key is the marker.
        marker = r.get("NextMarker") or r["Contents"][-1]["Key"]
    fail(f"more than {MAX_PAGES} pages: {kw}")


def compare(case, orca_pages, origin_pages):
    check(
        len(orca_pages) == len(origin_pages),
        f"{case}: {len(orca_pages)} pages through Orca, {len(origin_pages)} from the origin",
    )
    for i, (a, b) in enumerate(zip(orca_pages, origin_pages)):
        va, vb = page_view(a), page_view(b)
        check(va == vb, f"{case}: page {i} differs\n  orca:   {va}\n  origin: {vb}")
    return len(orca_pages)


def main():
    if len(sys.argv) != 5:
        fail("usage: s3_listing.py EDGE ORIGIN BUCKET MISSING_BUCKET")
    edge, origin, bucket, missing = sys.argv[1:]
    orca, direct = client(edge), client(origin)
    sends = count_sends(orca)

    cases = {
        "v2": {},
        "v2-delimiter": {"Delimiter": "/"},
        "v2-prefix": {"Prefix": "a/"},
        "v2-prefix-delimiter": {"Prefix": "a/", "Delimiter": "/"},
        "v2-unicode-prefix": {"Prefix": "ünïcødé/"},
        "v2-space-prefix": {"Prefix": "dir with space/"},
        "v2-plus-prefix": {"Prefix": "top+"},
        "v2-odd-delimiter": {"Delimiter": " "},
        "v2-start-after": {"StartAfter": "b/1"},
        "v2-fetch-owner": {"FetchOwner": True},
        "v2-encoding-url": {"EncodingType": "url", "Delimiter": "/"},
    }
    pages = {}
    listed = None
    for case, kw in cases.items():
        kw = dict(kw, Bucket=bucket, MaxKeys=4)
        a, b = pages_v2(orca, **kw), pages_v2(direct, **kw)
        pages[case] = compare(case, a, b)
        if case == "v2":
            listed = [o["Key"] for p in a for o in p.get("Contents", [])]
        if case == "v2-encoding-url":
            # The keys come back URL-encoded (botocore decodes them only when it chose the
            # encoding itself): decoded they are the plain keys.
            raw = [o["Key"] for p in a for o in p.get("Contents", [])]
            raw += [x["Prefix"] for p in a for x in p.get("CommonPrefixes", [])]
            check(
                any("%" in k for k in raw),
                f"EncodingType=url: no key came back encoded: {raw}",
            )
            plain = pages_v2(orca, Bucket=bucket, MaxKeys=4, Delimiter="/")
            want = [o["Key"] for p in plain for o in p.get("Contents", [])]
            want += [x["Prefix"] for p in plain for x in p.get("CommonPrefixes", [])]
            got = [urllib.parse.unquote_plus(k) for k in raw]
            check(sorted(got) == sorted(want), f"decoded {got} != {want}")
    for case, kw in {
        "v1": {},
        "v1-delimiter": {"Delimiter": "/"},
        "v1-prefix-delimiter": {"Prefix": "a/", "Delimiter": "/"},
        "v1-prefix": {"Prefix": "a/"},
        "v1-unicode-prefix": {"Prefix": "ü"},
    }.items():
        kw = dict(kw, Bucket=bucket, MaxKeys=4)
        pages[case] = compare(case, pages_v1(orca, **kw), pages_v1(direct, **kw))

    # Unpaged: the same keys in the same order as page by page.
    whole = orca.list_objects_v2(Bucket=bucket)
    check(
        [o["Key"] for o in whole.get("Contents", [])] == listed,
        "an unpaged listing differs from the pages joined",
    )

    r = orca.head_bucket(Bucket=bucket)
    check(r["ResponseMetadata"]["HTTPStatusCode"] == 200, f"head_bucket: {r}")
    try:
        orca.head_bucket(Bucket=missing)
        fail(f"head_bucket({missing}) succeeded")
    except ClientError as e:
        code = e.response["Error"]["Code"]
        status = e.response["ResponseMetadata"]["HTTPStatusCode"]
        check(
            code in ("404", "NoSuchBucket") and status == 404,
            f"head_bucket({missing}): {code} {status}",
        )
    try:
        orca.list_objects_v2(Bucket=missing)
        fail(f"list_objects_v2({missing}) succeeded")
    except ClientError as e:
        code = e.response["Error"]["Code"]
        check(code == "NoSuchBucket", f"list_objects_v2({missing}): {code}")
    try:
        orca.get_bucket_location(Bucket=missing)
        fail(f"get_bucket_location({missing}) succeeded")
    except ClientError as e:
        code = e.response["Error"]["Code"]
        check(code == "NoSuchBucket", f"get_bucket_location({missing}): {code}")
    loc = orca.get_bucket_location(Bucket=bucket)
    check(
        loc.get("LocationConstraint") in (None, "us-east-1"),
        f"get_bucket_location: {loc.get('LocationConstraint')!r}",
    )
    emit({"orca_sends": sends, "pages": pages, "keys": len(listed)})


if __name__ == "__main__":
    main()
