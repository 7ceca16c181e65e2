#!/usr/bin/env python3
"""Drives an S3-compatible server with boto3 for the end-to-end tests and the
s3 bench: makes buckets and objects through the server's own API, deletes
them, and totals a prefix from a full listing (the tests' independent
oracle, computed without any meterd code).

    s3ctl.py --endpoint http://127.0.0.1:PORT --access-key K --secret-key S [--region R] COMMAND ...
      create-bucket BUCKET
      put BUCKET --prefix P --count N --size BYTES [--first I]   objects {P}obj-{i:06}, i = I..I+N-1
      put-one BUCKET KEY --size BYTES
      delete BUCKET --prefix P [--count N]                      the first N keys under P (all by default)
      total BUCKET --prefix P                                   {"bytes": …, "objects": …}

Each command prints one JSON line on success. A failure exits 1 with one
line on stderr naming the command, the HTTP status and S3's error code (a
usage error exits 2, as argparse does).

Requests are path-style and signed with SigV4, so s3s-fs (which verifies
signatures) accepts them.
"""

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.handlers import set_list_objects_encoding_type_url

# Enough parallel PUTs to keep moto_server busy; its per-request CPU cost
# (~3-6 ms) is the limit, so more threads would not help.
THREADS = 16
# The DeleteObjects limit.
DELETE_BATCH = 1000


def client(args):
    s3 = boto3.client(
        "s3",
        endpoint_url=args.endpoint,
        aws_access_key_id=args.access_key,
        aws_secret_access_key=args.secret_key,
        region_name=args.region,
        config=Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            # Retries cover connection resets and 5xx only; a 4xx such as a
            # wrong signature fails at once.
            retries={"mode": "standard", "max_attempts": 5},
            max_pool_connections=THREADS * 2,
            # Plain bodies: no aws-chunked CRC32 trailers, which cost CPU on
            # both sides and which not every S3 look-alike parses.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    # boto3 asks for `encoding-type=url` and then percent-decodes every key
    # when the answer says EncodingType=url. s3s-fs 0.14 says so but sends
    # keys raw, so a key with `+` or `%` would come back changed (and then
    # not be found by delete). Listing unencoded is exact on both servers.
    s3.meta.events.unregister("before-parameter-build.s3.ListObjectsV2", set_list_objects_encoding_type_url)
    return s3


def keys(s3, bucket, prefix):
    """Every key under prefix, in listing order."""
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.extend(o["Key"] for o in page.get("Contents", []))
    return out


def create_bucket(s3, args):
    extra = {}
    if args.region != "us-east-1":  # AWS and moto want the region named, except the default
        extra["CreateBucketConfiguration"] = {"LocationConstraint": args.region}
    s3.create_bucket(Bucket=args.bucket, **extra)
    return {"created": args.bucket}


def put(s3, args):
    body = b"x" * args.size
    names = [f"{args.prefix}obj-{i:06}" for i in range(args.first, args.first + args.count)]
    with ThreadPoolExecutor(THREADS) as pool:
        # list() re-raises the first failure.
        list(pool.map(lambda k: s3.put_object(Bucket=args.bucket, Key=k, Body=body), names))
    return {"put": len(names), "bytes": len(names) * args.size}


def put_one(s3, args):
    s3.put_object(Bucket=args.bucket, Key=args.key, Body=b"x" * args.size)
    return {"put": 1, "bytes": args.size}


def delete(s3, args):
    doomed = keys(s3, args.bucket, args.prefix)
    if args.count is not None:
        if args.count > len(doomed):
            raise SystemExit(f"s3ctl delete: asked for {args.count} objects under {args.prefix!r}, found {len(doomed)}")
        doomed = doomed[: args.count]
    try:
        for i in range(0, len(doomed), DELETE_BATCH):
            batch = [{"Key": k} for k in doomed[i : i + DELETE_BATCH]]
            answer = s3.delete_objects(Bucket=args.bucket, Delete={"Objects": batch, "Quiet": True})
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise SystemExit(
                    f"s3ctl delete: {len(answer['Errors'])} keys not deleted, "
                    f"first {first.get('Key')!r}: {first.get('Code')} {first.get('Message', '')}"
                )
    except ClientError as e:
        # Both moto and s3s-fs 0.14 implement DeleteObjects; other
        # look-alikes may not, so fall back to one request per key.
        if e.response.get("Error", {}).get("Code") not in ("NotImplemented", "MethodNotAllowed"):
            raise
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(lambda k: s3.delete_object(Bucket=args.bucket, Key=k), doomed))
    return {"deleted": len(doomed)}


def total(s3, args):
    size = objects = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args.bucket, Prefix=args.prefix):
        for o in page.get("Contents", []):
            size += o["Size"]
            objects += 1
    return {"bytes": size, "objects": objects}


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", required=True, help="http://127.0.0.1:PORT")
    p.add_argument("--access-key", required=True)
    p.add_argument("--secret-key", required=True)
    p.add_argument("--region", default="us-east-1")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("create-bucket").add_argument("bucket")
    c = sub.add_parser("put")
    c.add_argument("bucket")
    c.add_argument("--prefix", default="")
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--size", type=int, required=True)
    c.add_argument("--first", type=int, default=0)
    c = sub.add_parser("put-one")
    c.add_argument("bucket")
    c.add_argument("key")
    c.add_argument("--size", type=int, required=True)
    c = sub.add_parser("delete")
    c.add_argument("bucket")
    c.add_argument("--prefix", default="")
    c.add_argument("--count", type=int)
    c = sub.add_parser("total")
    c.add_argument("bucket")
    c.add_argument("--prefix", default="")
    return p


COMMANDS = {"create-bucket": create_bucket, "put": put, "put-one": put_one, "delete": delete, "total": total}


def main():
    args = parser().parse_args()
    try:
        result = COMMANDS[args.command](client(args), args)
    except ClientError as e:
        error = e.response.get("Error", {})
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        message = error.get("Message") or "(no message)"
        sys.exit(f"s3ctl {args.command}: {e.operation_name} answered HTTP {status} {error.get('Code', '?')}: {message}")
    except BotoCoreError as e:  # connection refused, timeouts, bad endpoint URL
        sys.exit(f"s3ctl {args.command}: {type(e).__name__}: {e}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
