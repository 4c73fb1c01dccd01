"""OpenTelemetry traces of real runs: a receiver in this process takes the driver's OTLP/HTTP
export (decoded with the official protobuf classes) and a span a guest posts itself."""

from __future__ import annotations

import signal

import pytest
from support.driver import wait_for_line

from tests.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.vm

# A guest-side program adding a child span to the driver's trace: it reads the W3C
# TRACEPARENT the driver put in the command's environment and posts OTLP/JSON to the host
# (slirp's 10.0.2.2 is the host's loopback) with busybox wget.
EMIT_SPAN = (
    "tid=$(echo $TRACEPARENT | cut -d- -f2); pid=$(echo $TRACEPARENT | cut -d- -f3); "
    "sid=$(head -c8 /dev/urandom | od -An -tx1 | tr -d ' \\n'); now=$(date +%s)000000000; "
    "wget -q -O- --header 'Content-Type: application/json' --post-data "
    '"{\\"resourceSpans\\":[{\\"resource\\":{\\"attributes\\":[{\\"key\\":\\"service.name\\",'
    '\\"value\\":{\\"stringValue\\":\\"guest-app\\"}}]},\\"scopeSpans\\":[{\\"spans\\":[{'
    '\\"traceId\\":\\"$tid\\",\\"spanId\\":\\"$sid\\",\\"parentSpanId\\":\\"$pid\\",'
    '\\"name\\":\\"guest work\\",\\"kind\\":1,\\"startTimeUnixNano\\":\\"$now\\",'
    '\\"endTimeUnixNano\\":\\"$now\\"}]}]}]}" http://10.0.2.2:PORT/v1/traces'
)

TWO_MACHINES = """
start_all()
with subtest("both answer"):
    server.succeed("true")
    client.succeed("echo hello")
with subtest("guest span"):
    server.succeed({emit!r})
with subtest("a failing command"):
    client.succeed("echo oops; exit 3")
"""


@pytest.fixture
def receiver(monkeypatch):
    with OtlpReceiver() as r:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", r.endpoint)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "nixos-tests")
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=qa,ci.job=42")
        monkeypatch.delenv("TRACEPARENT", raising=False)
        yield r
    assert not r.errors, r.errors


def ancestors(r: OtlpReceiver, span) -> list[str]:
    ids = r.by_id()
    names = []
    while span.parent_id in ids:
        span = ids[span.parent_id]
        names.append(span.name)
    return names


def test_span_tree_of_a_failing_two_machine_run(vm_env, receiver):
    script = TWO_MACHINES.format(emit=EMIT_SPAN.replace("PORT", str(receiver.port)))
    run = vm_env.run({"server": [1], "client": [1]}, script)
    assert run.returncode == 1, run.stderr[-3000:]
    r = receiver
    assert r.wait_for(lambda spans: any(s.name == "run test.py" for s in spans)), r.names()

    root = r.one("run test.py")
    assert root.parent_id == ""
    assert {s.trace_id for s in r.spans} == {root.trace_id}, "one trace, the guest's span too"
    assert root.resource["service.name"] == "nixos-tests"
    assert root.resource["team"] == "qa" and root.resource["ci.job"] == "42"
    assert root.status_code == 2 and "exit code 3" in root.status_message

    test = r.one("test.py")
    assert test.parent_id == root.span_id
    assert test.attributes["nixos_test.kind"] == "test"
    assert test.status_code == 2

    subtests = {s.name: s for s in r.spans if s.attributes.get("nixos_test.kind") == "subtest"}
    assert set(subtests) == {"both answer", "guest span", "a failing command"}
    for s in subtests.values():
        assert "test.py" in ancestors(r, s)
    assert subtests["both answer"].status_code == 1
    failed = subtests["a failing command"]
    assert failed.status_code == 2 and "exit code 3" in failed.status_message

    for machine in ("server", "client"):
        (boot,) = [s for s in r.named(f"boot {machine}")]
        assert boot.attributes["nixos_test.kind"] == "boot"
        assert boot.attributes["nixos_test.machine"] == machine
        assert boot.status_code == 1 and boot.end_ns > boot.start_ns
        assert "run test.py" in ancestors(r, boot)

    ops = {
        (s.attributes["nixos_test.machine"], s.attributes["nixos_test.command"]): s
        for s in r.named("succeed")
    }
    hello = ops[("client", "echo hello")]
    assert r.by_id()[hello.parent_id].name == "both answer"
    assert hello.attributes["nixos_test.operation"] == "succeed"
    assert hello.attributes["nixos_test.exit_status"] == 0
    assert hello.attributes["nixos_test.output_bytes"] == len("hello\n")
    assert hello.status_code == 1

    oops = ops[("client", "echo oops; exit 3")]
    assert r.by_id()[oops.parent_id].name == "a failing command"
    assert oops.attributes["nixos_test.exit_status"] == 3
    assert oops.attributes["nixos_test.output_bytes"] == len("oops\n")
    assert oops.status_code == 2 and "exit code 3" in oops.status_message
    assert [e["name"] for e in oops.events] == ["exception"]
    assert "exit code 3" in oops.events[0]["exception.message"]

    guest = r.one("guest work")
    assert guest.content_type == "application/json"  # posted by the guest, not the driver
    assert guest.resource["service.name"] == "guest-app"
    # its parent is the subtest the command ran in
    assert r.by_id()[guest.parent_id] is subtests["guest span"]
    (emitting,) = [
        s for s in r.named("succeed") if "TRACEPARENT" in s.attributes["nixos_test.command"]
    ]
    assert emitting.parent_id == subtests["guest span"].span_id
    # (its times are the guest's clock, which need not agree with the host's)


def test_pytest_style_tests_are_spans_under_an_outer_traceparent(vm_env, receiver, monkeypatch):
    outer_trace, outer_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    monkeypatch.setenv("TRACEPARENT", f"00-{outer_trace}-{outer_span}-01")
    script = (
        "def test_one(machine):\n"
        "    machine.succeed('true')\n\n"
        "def test_two(machine, subtest):\n"
        "    with subtest('inner'):\n"
        "        machine.succeed('echo 2')\n"
    )
    run = vm_env.run({"machine": []}, script)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    r = receiver
    assert r.wait_for(lambda spans: any(s.name == "run test.py" for s in spans))
    root = r.one("run test.py")
    assert (root.trace_id, root.parent_id) == (outer_trace, outer_span), "a CI job's trace"
    tests = {s.name: s for s in r.spans if s.attributes.get("nixos_test.kind") == "test"}
    assert set(tests) == {"test.py::test_one", "test.py::test_two"}, sorted(tests)
    assert all(s.status_code == 1 for s in tests.values())
    inner = r.one("inner")
    assert r.by_id()[inner.parent_id].name == "test.py::test_two"
    (op,) = [s for s in r.named("succeed") if s.attributes["nixos_test.command"] == "echo 2"]
    assert r.by_id()[op.parent_id].name == "inner"
    # the HTML report lists pytest's tests too
    report = (vm_env.out / "report.html").read_text()
    assert "test.py::test_two" in report and "inner" in report


def test_spans_are_flushed_on_the_global_timeout(vm_env, receiver):
    script = "machine.start()\nmachine.succeed('true')\nmachine.succeed('sleep 600')\n"
    run = vm_env.run({"machine": []}, script, "--global-timeout", "20", timeout=120)
    assert run.returncode == -signal.SIGTERM, run.stderr[-3000:]
    r = receiver
    assert r.wait_for(lambda spans: any(s.name == "run test.py" for s in spans)), r.names()
    root = r.one("run test.py")
    assert root.status_code == 2 and "timeout" in root.status_message
    # the operation the timeout cut short (the sleep; the boot on a very slow machine)
    cut = [s for s in r.named("succeed") if s.status_code == 2]
    assert len(cut) == 1, cut


def test_spans_are_flushed_on_ctrl_c(vm_env, receiver):
    script = (
        "machine.start()\nmachine.succeed('true')\nprint('sleeping', flush=True)\n"
        "machine.succeed('sleep 600')\n"
    )
    p = vm_env.spawn({"machine": []}, script)
    r = receiver
    # the boot span is exported (batched) once the machine answered; then the sleep runs
    assert r.wait_for(lambda spans: any(s.name == "boot machine" for s in spans), timeout=120)
    wait_for_line(p, "sleeping")
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGINT
    assert r.wait_for(lambda spans: any(s.name == "run test.py" for s in spans)), r.names()
    root = r.one("run test.py")
    assert root.status_code == 2 and "interrupted" in root.status_message


def test_nothing_is_exported_when_the_sdk_is_disabled(vm_env, receiver, monkeypatch):
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    run = vm_env.run({"machine": []}, "machine.succeed('true')\n")
    assert run.returncode == 0, run.stderr[-3000:]
    assert receiver.requests == 0 and receiver.spans == []
