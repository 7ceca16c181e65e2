"""signed-json-py: a generic signed-JSON webhook adapter for meterd, in Python.

Any system that can sign a JSON body with HMAC-SHA256 can report usage
through it. Built with componentize-py into a WebAssembly component that
runs under meterd's locked-down WASI p2 (no files, env, sockets). The
JavaScript plugin `signed-json-js` implements the same contract; both pass
the conformance cases in tests/conformance/signed-json/.

Config (`[plugins.signed-json-py]`):
  signature_secret   required: the HMAC-SHA256 key
  signature_header   default `x-meterd-signature`; value `sha256=<hex>` of
                     the raw body
  log_deliveries     "true": one stdout line per delivery (WASI stdout is
                     the gateway's log)

Body (UTF-8 JSON):
  {"id": "evt-1", "org": "acme",
   "records": [{"subject": "sbx-1", "metric": "sandbox_cpu_core_seconds",
                "kind": "delta", "quantity": "12.5",
                "at": "2025-08-06T20:59:36.123Z",
                "window_start": "2025-08-06T20:58:24Z",
                "attributes": {"template_id": "base"}}]}

Quantities are decimal text, never JSON numbers (a float cannot carry an
exact quantity); times are RFC 3339 with at most millisecond precision.
"""

import hashlib
import hmac
import json
import re
# hmac's pure-Python path (there is no OpenSSL in the component) imports
# `warnings` lazily; componentize-py bundles only modules imported at load.
import warnings  # noqa: F401

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    AdapterError_Config,
    AdapterError_Malformed,
    AdapterError_Unauthorized,
    AdapterError_Unsupported,
    AdapterInfo,
    Capabilities,
    UsageKind,
    UsageRecord,
    WebhookOutcome,
)

NAME = "signed-json-py"
VERSION = "0.1.0"
DEFAULT_HEADER = "x-meterd-signature"
MAX_RECORDS = 1000

_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,3}))?([Zz]|[+-]\d{2}:\d{2})$"
)
_QUANTITY = re.compile(r"^-?\d+(\.\d+)?$")


def _malformed(message):
    return Err(AdapterError_Malformed(message))


def _days_from_civil(year, month, day):
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant)."""
    year -= month <= 2
    era = (year if year >= 0 else year - 399) // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _days_in_month(year, month):
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def parse_time(field, text):
    """RFC 3339 text -> milliseconds since the epoch, exactly."""
    if not isinstance(text, str):
        raise _malformed(f"{field} must be RFC 3339 text")
    m = _TIME.match(text)
    if m is None:
        raise _malformed(f"{field} {json.dumps(text)} is not RFC 3339 with at most millisecond precision")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)
            and hour <= 23 and minute <= 59 and second <= 59):
        raise _malformed(f"{field} {json.dumps(text)} is not a valid date and time")
    millis = int((m.group(7) or "0").ljust(3, "0"))
    zone = m.group(8)
    offset_min = 0
    if zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        offset_min = sign * (int(zone[1:3]) * 60 + int(zone[4:6]))
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    return (seconds - offset_min * 60) * 1000 + millis


def _text(record, index, key, required=True):
    value = record.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or value == "":
        raise _malformed(f"records[{index}].{key} must be non-empty text")
    return value


def _record(event_id, org, index, item):
    if not isinstance(item, dict):
        raise _malformed(f"records[{index}] must be an object")
    kind_text = _text(item, index, "kind")
    kinds = {"delta": UsageKind.DELTA, "level": UsageKind.LEVEL}
    if kind_text not in kinds:
        raise _malformed(f"records[{index}].kind must be \"delta\" or \"level\"")
    quantity = item.get("quantity")
    if not isinstance(quantity, str) or _QUANTITY.match(quantity) is None:
        raise _malformed(f"records[{index}].quantity must be decimal text such as \"12.5\" (not a JSON number)")
    at = parse_time(f"records[{index}].at", item.get("at"))
    window = item.get("window_start")
    window_start = None if window is None else parse_time(f"records[{index}].window_start", window)
    attributes = item.get("attributes", {})
    if not isinstance(attributes, dict) or not all(isinstance(v, str) for v in attributes.values()):
        raise _malformed(f"records[{index}].attributes must be an object of text values")
    return UsageRecord(
        event_id=event_id,
        org_id=org,
        subject=_text(item, index, "subject"),
        metric=_text(item, index, "metric"),
        kind=kinds[kind_text],
        quantity=quantity,
        at=at,
        window_start=window_start,
        attributes=sorted(attributes.items()),
    )


def verify(headers, body):
    secret = host.config("signature_secret")
    if not secret:
        raise Err(AdapterError_Config("signature_secret is not configured"))
    name = (host.config("signature_header") or DEFAULT_HEADER).lower()
    given = [v for (k, v) in headers if k == name]
    if not given:
        raise Err(AdapterError_Unauthorized(f"missing {name} header"))
    if not given[0].startswith("sha256="):
        raise Err(AdapterError_Unauthorized(f"{name} must be sha256=<hex of HMAC-SHA256 of the body>"))
    expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(given[0][len("sha256="):].strip().lower(), expected):
        raise Err(AdapterError_Unauthorized("signature does not match the body"))


class Adapter(exports.Adapter):
    def info(self):
        return AdapterInfo(
            name=NAME,
            version=VERSION,
            capabilities=Capabilities.PUSH,
            description="Generic HMAC-SHA256-signed JSON usage webhooks (Python)",
        )

    def handle_webhook(self, req):
        verify(req.headers, req.body)
        try:
            doc = json.loads(req.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise _malformed(f"body is not UTF-8 JSON: {e}")
        if not isinstance(doc, dict):
            raise _malformed("body must be a JSON object")
        event_id, org = doc.get("id"), doc.get("org")
        if not isinstance(event_id, str) or event_id == "":
            raise _malformed("id must be non-empty text")
        if not isinstance(org, str) or org == "":
            raise _malformed("org must be non-empty text")
        items = doc.get("records")
        if not isinstance(items, list):
            raise _malformed("records must be an array")
        if len(items) > MAX_RECORDS:
            raise _malformed(f"at most {MAX_RECORDS} records per delivery")
        records = [_record(event_id, org, i, item) for (i, item) in enumerate(items)]
        if host.config("log_deliveries") == "true":
            print(f"{NAME}: event {event_id} for {org}: {len(records)} records")
        return WebhookOutcome(event_id=event_id, records=records)

    def targets(self):
        return []

    def poll(self, target, cursor):
        raise Err(AdapterError_Unsupported("signed-json takes webhooks only"))
