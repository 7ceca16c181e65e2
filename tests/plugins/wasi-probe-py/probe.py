"""wasi-probe-py (test-only): reports what a Python plugin can reach under
meterd's WASI p2 — environment, files, sockets, name lookup, clocks — as
the attributes of one record, so host/src/runtime tests can check the
sandbox gives nothing beyond the `host` interface."""

import os
import socket
import time

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    AdapterError_Unsupported,
    AdapterInfo,
    Capabilities,
    UsageKind,
    UsageRecord,
    WebhookOutcome,
)


def attempt(action):
    """"allowed" when `action` runs, else the exception's type name."""
    try:
        action()
        return "allowed"
    except Exception as e:  # noqa: BLE001 - any refusal is the answer
        return type(e).__name__


def write_file():
    with open("/tmp/meterd-wasi-probe", "w") as f:
        f.write("x")


class Adapter(exports.Adapter):
    def info(self):
        return AdapterInfo(
            name="wasi-probe-py",
            version="0.1.0",
            capabilities=Capabilities.PUSH,
            description="test-only: what a Python plugin can reach",
        )

    def handle_webhook(self, req):
        print("wasi-probe-py: probing")
        seen = {
            "env": str(len(os.environ)),
            "read_file": attempt(lambda: open("/etc/hostname").read()),
            "list_root": attempt(lambda: os.listdir("/")),
            "write_file": attempt(write_file),
            "connect": attempt(lambda: socket.create_connection(("127.0.0.1", 5432), timeout=1)),
            "resolve": attempt(lambda: socket.getaddrinfo("localhost", 80)),
            "wall_ms": str(time.time_ns() // 1_000_000),
            "now_ms": str(host.now_ms()),
        }
        record = UsageRecord(
            event_id="probe",
            org_id="probe",
            subject="probe",
            metric="probe",
            kind=UsageKind.LEVEL,
            quantity="1",
            at=host.now_ms(),
            window_start=None,
            attributes=sorted(seen.items()),
        )
        return WebhookOutcome(event_id="probe", records=[record])

    def targets(self):
        return []

    def poll(self, target, cursor):
        raise Err(AdapterError_Unsupported("webhooks only"))
