#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (tests/fuzz/corpus/<target>/) from
the real fixtures in tests/fixtures/ (see each folder's SOURCES.md).

The seeds are committed; run this again only when fixtures or a target's
input layout change. Each seed is named after what it was made from.
Layouts follow the targets' headers:
  e2b_signature: flags, position (2 bytes), secret length, secret, body
  daytona_svix:  flags, position (2 bytes), skew, key length, key,
                 id length, id, body
Targets that read `arbitrary`-structured input (s3_listing_roundtrip,
s3_sigv4, s3_scan) get fixture bytes as they are: any bytes are a valid
input there, and real keys, dates and headers make good raw material.
"""

import base64
import json
import re
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures"
CORPUS = HERE / "corpus"


def fixture(path):
    return (FIXTURES / path).read_bytes()


def write(target, name, data):
    (CORPUS / target).mkdir(parents=True, exist_ok=True)
    (CORPUS / target / name).write_bytes(data)


def main():
    if CORPUS.exists():
        shutil.rmtree(CORPUS)

    # --- sdk ---------------------------------------------------------------
    e2b_vector = json.loads(fixture("e2b/webhook-signature-vector.constructed.json"))
    svix_vector = json.loads(fixture("daytona/svix-signature-vector.docs.json"))
    svix_signed = json.loads(fixture("daytona/webhook-sandbox-state-updated.constructed.signed.json"))
    write("sdk_base64", "e2b-std-padded", e2b_vector["signature_std_base64_padded"].encode())
    write("sdk_base64", "e2b-urlsafe-nopad", e2b_vector["signature_docs_urlsafe_nopad"].encode())
    write("sdk_base64", "svix-signature", svix_vector["headers"]["svix-signature"][3:].encode())
    write("sdk_base64", "svix-secret", svix_vector["secret"][len("whsec_"):].encode())
    write("sdk_base64", "daytona-secret", svix_signed["secret"][len("whsec_"):].encode() + b"\n")

    times = set()
    for path in sorted(FIXTURES.rglob("*.json")):
        times.update(re.findall(rb'"(\d{4}-\d\d-\d\d[Tt ][0-9:.]+(?:Z|[+-]\d\d:\d\d)?)"', path.read_bytes()))
    times.update([b"2025-08-06T22:59:36.1+02:00", b"1969-12-31t23:59:59.999z", b"2024-02-29 00:00:60-23:59"])
    for i, t in enumerate(sorted(times)):
        write("sdk_rfc3339", f"time-{i:02}", t)

    # --- e2b ---------------------------------------------------------------
    killed = fixture("e2b/webhook-killed.constructed.body.json")
    secret = e2b_vector["secret"].encode()
    for flags, name in [(0, "std"), (1, "urlsafe")]:
        write("e2b_signature", f"killed-{name}", bytes([flags, 0, 17, len(secret)]) + secret + killed)
    dashboard = fixture("e2b/webhook-payload.dashboard-example.v2.json")
    write("e2b_signature", "dashboard-example", bytes([2, 1, 0, len(secret)]) + secret + dashboard)

    docs = fixture("e2b/webhook-payload.docs-pr197.v2.json")
    write("e2b_normalize", "killed.constructed", killed)
    write("e2b_normalize", "dashboard-example", dashboard)
    write("e2b_normalize", "docs-pr197-placeholder", docs)
    for kind in ["created", "resumed", "paused", "killed", "updated"]:
        body = docs.replace(b"<sandbox-event-type>", b"sandbox.lifecycle." + kind.encode())
        write("e2b_normalize", f"docs-pr197-{kind}", body)
    write("e2b_normalize", "events-api-array", fixture("e2b/events-api-team-sandbox-events.docs.v1.json"))

    # --- daytona -----------------------------------------------------------
    def svix_seed(secret, message_id, body, flags=0):
        key = base64.b64decode(secret[len("whsec_"):] + "==")
        message_id = message_id.encode()
        return bytes([flags, 0, 5, 0, len(key)]) + key + bytes([len(message_id)]) + message_id + body

    write("daytona_svix", "svix-docs-vector", svix_seed(
        svix_vector["secret"], svix_vector["headers"]["svix-id"], svix_vector["payload"].encode()))
    state_updated = fixture("daytona/" + svix_signed["body_file"])
    write("daytona_svix", "state-updated-constructed", svix_seed(
        svix_signed["secret"], svix_signed["headers"]["svix-id"], state_updated, flags=3))

    for path in sorted((FIXTURES / "daytona").glob("analytics-*.json")):
        write("daytona_analytics", path.stem, path.read_bytes())
    for path in sorted((FIXTURES / "daytona").glob("webhook-*.json")):
        if "signed" not in path.name:
            write("daytona_webhook", path.stem, path.read_bytes())

    # --- s3-storage --------------------------------------------------------
    for path in sorted((FIXTURES / "s3").glob("*.xml")):
        write("s3_listing", path.stem, path.read_bytes())
    for path in ["s3/list-objects-v2-encoding-url-delimiter.moto.xml", "s3/list-objects-v2-page2-continuation.s3s.xml",
                 "s3/list-objects-v2-aws-doc-example4-continuation.xml"]:
        write("s3_listing_roundtrip", Path(path).stem, fixture(path))
        write("s3_scan", Path(path).stem, fixture(path))
    for path in sorted((FIXTURES / "sigv4").glob("*/request.txt")):
        write("s3_sigv4", path.parent.name, path.read_bytes())


if __name__ == "__main__":
    main()
