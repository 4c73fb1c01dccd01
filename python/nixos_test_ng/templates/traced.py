# OpenTelemetry: with the standard variables set (OTEL_EXPORTER_OTLP_ENDPOINT, or
# OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, ...), the
# run is exported over OTLP/HTTP to that collector: a span for the run, the test, each
# subtest, `log.nested` block, boot and machine command. Without them the test runs the
# same and exports nothing.
#
# Every command in the guest gets TRACEPARENT (W3C trace context) while exporting, so
# software there can add spans to the same trace; the last subtest posts one itself.
import json
import os
import secrets
import shlex
import time
from urllib.parse import urlsplit


def traces_endpoint_for_the_guest():
    """The collector's traces URL as the guest reaches it, or None. QEMU's user-mode
    network (eth0) takes the guest to the host's loopback at 10.0.2.2."""
    url = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not url and os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        url = os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
    parts = urlsplit(url or "")
    if parts.scheme != "http" or parts.hostname not in ("localhost", "127.0.0.1"):
        return None
    return parts._replace(netloc=f"10.0.2.2:{parts.port or 80}").geturl()


start_all()

with subtest("the machine is up"):
    machine.succeed("uname -a")

with subtest("nested blocks are spans too"):
    with log.nested("prepare some files"):
        machine.succeed("mkdir -p /tmp/data", "touch /tmp/data/a /tmp/data/b /tmp/data/c")
    t.assertEqual(machine.succeed("ls /tmp/data | wc -l").strip(), "3")

with subtest("a span from inside the guest"):
    traceparent = machine.succeed('printf %s "${TRACEPARENT:-}"')
    endpoint = traces_endpoint_for_the_guest()
    if not traceparent or endpoint is None:
        log.log("not exporting to a collector on this host: no span from the guest")
    else:
        # TRACEPARENT is 00-<trace id>-<id of the span the command runs in>-<flags>
        _, trace_id, parent_id, _ = traceparent.split("-")
        now = time.time_ns()
        span = {
            "traceId": trace_id,
            "spanId": secrets.token_hex(8),
            "parentSpanId": parent_id,
            "name": "guest work",
            "kind": 1,
            "startTimeUnixNano": str(now),
            "endTimeUnixNano": str(now + 1_000_000),
        }
        resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "guest"}}]}
        body = {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": [span]}]}]}
        machine.succeed(
            "wget -q -O- --header 'Content-Type: application/json'"
            f" --post-data {shlex.quote(json.dumps(body))} {shlex.quote(endpoint)}"
        )
