#!/usr/bin/env python3
"""Drives an S3-compatible server with boto3 for the end-to-end tests: makes
buckets and objects through the server's own API, and totals a prefix as an
independent oracle. Each command prints one JSON line; a failure exits 1
with a line saying what went wrong."""

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config


def client(args):
    return boto3.client(
        "s3",
        endpoint_url=args.endpoint,
        aws_access_key_id=args.access_key,
        aws_secret_access_key=args.secret_key,
        region_name=args.region,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                      retries={"max_attempts": 5}, max_pool_connections=32),
    )


def keys(s3, bucket, prefix):
    """Every key under prefix, in listing order."""
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.extend(o["Key"] for o in page.get("Contents", []))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--access-key", required=True)
    p.add_argument("--secret-key", required=True)
    p.add_argument("--region", default="us-east-1")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("create-bucket").add_argument("bucket")
    put = sub.add_parser("put")
    put.add_argument("bucket")
    put.add_argument("--prefix", default="")
    put.add_argument("--count", type=int, required=True)
    put.add_argument("--size", type=int, required=True)
    put.add_argument("--first", type=int, default=0)
    one = sub.add_parser("put-one")
    one.add_argument("bucket")
    one.add_argument("key")
    one.add_argument("--size", type=int, required=True)
    delete = sub.add_parser("delete")
    delete.add_argument("bucket")
    delete.add_argument("--prefix", default="")
    delete.add_argument("--count", type=int)
    total = sub.add_parser("total")
    total.add_argument("bucket")
    total.add_argument("--prefix", default="")
    args = p.parse_args()
    s3 = client(args)

    if args.command == "create-bucket":
        s3.create_bucket(Bucket=args.bucket)
        result = {"created": args.bucket}
    elif args.command == "put":
        body = b"x" * args.size
        names = [f"{args.prefix}obj-{i:06}" for i in range(args.first, args.first + args.count)]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: s3.put_object(Bucket=args.bucket, Key=k, Body=body), names))
        result = {"put": len(names), "bytes": len(names) * args.size}
    elif args.command == "put-one":
        s3.put_object(Bucket=args.bucket, Key=args.key, Body=b"x" * args.size)
        result = {"put": 1, "bytes": args.size}
    elif args.command == "delete":
        doomed = keys(s3, args.bucket, args.prefix)
        if args.count is not None:
            doomed = doomed[: args.count]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: s3.delete_object(Bucket=args.bucket, Key=k), doomed))
        result = {"deleted": len(doomed)}
    else:
        sizes = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args.bucket, Prefix=args.prefix):
            sizes.extend(o["Size"] for o in page.get("Contents", []))
        result = {"bytes": sum(sizes), "objects": len(sizes)}
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # one clear line for the test's panic message
        print(f"s3ctl: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
