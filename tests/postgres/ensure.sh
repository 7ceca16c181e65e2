#!/usr/bin/env bash
# Makes sure the PostgreSQL server the store tests use is up
# (METERD_TEST_POSTGRES, default postgres://postgres@127.0.0.1:5432/postgres):
# if it does not answer, start the machine's cluster (Debian:
# pg_ctlcluster), then check again. Exits non-zero with what to do if it
# still does not answer.
set -euo pipefail
url="${METERD_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}"
ready() { pg_isready -q -d "$url" 2>/dev/null; }
if ! command -v pg_isready >/dev/null; then
    echo "tests/postgres/ensure.sh: pg_isready not found; install postgresql-client, or start a server and set METERD_TEST_POSTGRES" >&2
    exit 1
fi
ready && exit 0
echo "tests/postgres/ensure.sh: PostgreSQL does not answer at $url; starting the local cluster" >&2
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }
if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters -h | while read -r version cluster _; do
        sudo_if_needed pg_ctlcluster "$version" "$cluster" start || true
    done
elif command -v service >/dev/null; then
    sudo_if_needed service postgresql start || true
fi
for _ in $(seq 1 30); do
    ready && exit 0
    sleep 1
done
echo "tests/postgres/ensure.sh: PostgreSQL still does not answer at $url. Start a server that trusts local connections (Debian: apt-get install postgresql; pg_ctlcluster 15 main start) or set METERD_TEST_POSTGRES=postgres://USER@HOST:PORT/DB for one where USER may create databases." >&2
exit 1
