#!/usr/bin/env bash
# Installs the S3-compatible servers the end-to-end tests run on loopback,
# from package registries, into target/s3-servers/ (idempotent; seconds when
# already there):
#   - moto_server (PyPI moto[server]) and boto3, in a virtualenv;
#   - openapi-spec-validator and schemathesis (PyPI), in the same
#     virtualenv, which the OpenAPI tests run on the served document and
#     against the live gateway;
#   - s3s-fs (crates.io, `binary` feature), which verifies SigV4 signatures.
# 0.14.1 is the newest s3s-fs that builds with rustc 1.95.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=target/s3-servers
mkdir -p "$root"

moto_version=5.2.5
boto3_version=1.44.5
if ! "$root/venv/bin/python" -c "import moto, boto3, sys; sys.exit(moto.__version__ != '$moto_version')" 2>/dev/null; then
    echo "tests/s3/install.sh: installing moto[server]==$moto_version and boto3==$boto3_version into $root/venv" >&2
    python3 -m venv "$root/venv"
    "$root/venv/bin/pip" install --quiet "moto[server]==$moto_version" "boto3==$boto3_version"
fi

validator_version=0.7.2
if ! "$root/venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('openapi-spec-validator') != '$validator_version')" 2>/dev/null; then
    echo "tests/s3/install.sh: installing openapi-spec-validator==$validator_version into $root/venv" >&2
    "$root/venv/bin/pip" install --quiet "openapi-spec-validator==$validator_version"
fi

schemathesis_version=4.32.5
if ! "$root/venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('schemathesis') != '$schemathesis_version')" 2>/dev/null; then
    echo "tests/s3/install.sh: installing schemathesis==$schemathesis_version into $root/venv" >&2
    "$root/venv/bin/pip" install --quiet "schemathesis==$schemathesis_version"
fi

s3s_version=0.14.1
if ! "$root/bin/s3s-fs" --version 2>/dev/null | grep -q "$s3s_version"; then
    echo "tests/s3/install.sh: building s3s-fs $s3s_version into $root/bin (a minute or two, once)" >&2
    # A debug build: 83 s instead of 152 s, and the tests' objects are small.
    cargo install --quiet --locked --debug --features binary --root "$root" "s3s-fs@$s3s_version"
fi
