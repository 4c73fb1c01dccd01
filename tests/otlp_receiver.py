"""An OTLP/HTTP trace receiver for tests and benchmarks, in the test process.

It accepts `POST /v1/traces` as protobuf (what the driver sends, decoded with the official
`opentelemetry-proto` classes, so our hand-written encoder is checked against them) and as
OTLP/JSON (what a guest-side `wget` sends), and keeps every span as a `ReceivedSpan`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str
    events: list[dict[str, Any]]
    resource: dict[str, Any]
    content_type: str


@dataclass
class OtlpReceiver:
    """`with OtlpReceiver() as r:` serves on 127.0.0.1:`r.port` until the block ends."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    #: each request's HTTP headers (names lowercased)
    headers: list[dict[str, str]] = field(default_factory=list)

    def __enter__(self) -> OtlpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                kind = self.headers.get("Content-Type", "")
                with receiver._lock:
                    receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                try:
                    if self.path != "/v1/traces":
                        raise ValueError(f"unexpected path {self.path}")
                    spans = _decode(body, kind)
                except Exception as e:  # noqa: BLE001 - reported to the test
                    receiver.errors.append(f"{type(e).__name__}: {e}")
                    self.send_response(400)
                    self.end_headers()
                    return
                with receiver._lock:
                    receiver.spans.extend(spans)
                    receiver.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", kind or "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(list(self.spans)):
                    return True
            time.sleep(0.05)
        return False

    def named(self, name: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name]

    def one(self, name: str) -> ReceivedSpan:
        found = self.named(name)
        if len(found) != 1:
            raise AssertionError(f"{len(found)} spans named {name!r}; got {self.names()}")
        return found[0]

    def names(self) -> list[str]:
        return [s.name for s in self.spans]

    def by_id(self) -> dict[str, ReceivedSpan]:
        return {s.span_id: s for s in self.spans}


def _any_value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_any_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _decode(body: bytes, content_type: str) -> list[ReceivedSpan]:
    if content_type.startswith("application/json"):
        return _decode_json(json.loads(body))
    if content_type != "application/x-protobuf":
        raise ValueError(f"unexpected content type {content_type!r}")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for rs in request.resource_spans:
        resource = {a.key: _any_value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        name=s.name,
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        attributes={a.key: _any_value(a.value) for a in s.attributes},
                        status_code=s.status.code,
                        status_message=s.status.message,
                        events=[
                            {
                                "name": e.name,
                                **{a.key: _any_value(a.value) for a in e.attributes},
                            }
                            for e in s.events
                        ],
                        resource=resource,
                        content_type=content_type,
                    )
                )
    return spans


def _json_value(v: dict[str, Any]) -> Any:
    for key in ("stringValue", "intValue", "boolValue", "doubleValue"):
        if key in v:
            return v[key]
    return None


def _decode_json(doc: dict[str, Any]) -> list[ReceivedSpan]:
    """OTLP/JSON: ids are hex strings, numbers of nanoseconds may be strings."""
    spans = []
    for rs in doc["resourceSpans"]:
        attrs = rs.get("resource", {}).get("attributes", [])
        resource = {a["key"]: _json_value(a["value"]) for a in attrs}
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                spans.append(
                    ReceivedSpan(
                        trace_id=s["traceId"].lower(),
                        span_id=s["spanId"].lower(),
                        parent_id=s.get("parentSpanId", "").lower(),
                        name=s["name"],
                        start_ns=int(s.get("startTimeUnixNano", 0)),
                        end_ns=int(s.get("endTimeUnixNano", 0)),
                        attributes={
                            a["key"]: _json_value(a["value"]) for a in s.get("attributes", [])
                        },
                        status_code=int(s.get("status", {}).get("code", 0)),
                        status_message=s.get("status", {}).get("message", ""),
                        events=[],
                        resource=resource,
                        content_type="application/json",
                    )
                )
    return spans
