"""Every template of `nixos-test-ng new`, written as a user would and run exactly as its
header's `nixos-test-ng run ...` line says: through a shell, in the script's folder, on the
built-in guests. The traced one exports to a receiver named by the standard variables."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.driver.test_new import header_command, ng_environ
from tests.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.vm


def write_and_run(
    tmp_path: Path, template: str, env: dict[str, str | None] | None = None
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`nixos-test-ng new TEMPLATE -o work/my_TEMPLATE.py`, then its header's run line
    (`env`: variables to set, or with None to unset)."""
    merged = {**ng_environ(), "XDG_RUNTIME_DIR": str(tmp_path), **(env or {})}
    environ = {k: v for k, v in merged.items() if v is not None}
    script = tmp_path / "work" / f"my_{template}.py"
    new = subprocess.run(
        ["nixos-test-ng", "new", template, "-o", str(script)],
        capture_output=True, text=True, env=environ, timeout=60,
    )  # fmt: skip
    assert new.returncode == 0, new.stderr
    line = header_command(script, "run")
    assert line.startswith(f"nixos-test-ng run {script.name} ")
    run = subprocess.run(
        ["bash", "-c", line],
        capture_output=True, text=True, env=environ, cwd=script.parent, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return script, run


@pytest.mark.parametrize("template", ["minimal", "network", "graphical"])
def test_legacy_template_runs_as_its_header_says(template, tmp_path, guest_dir, leftovers):
    script, run = write_and_run(tmp_path, template)
    assert "!!!" not in run.stderr
    assert "test script finished" in run.stderr
    if template == "network":
        for subtest in ("the client reaches the server by name", "blocking the client's VLAN"):
            assert f"(finished: subtest: {subtest}" in run.stderr
    if template == "graphical":  # the screenshot lands in the output directory: cwd
        assert (script.parent / "screen.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "waiting for FROM THE SCREEN \\d+ to appear on screen" in run.stderr
    assert not leftovers(tmp_path, wait=3)


def test_systemd_template_runs_on_a_container(tmp_path, systemd_guest, leftovers):
    _, run = write_and_run(tmp_path, "systemd")
    assert "!!!" not in run.stderr
    assert "(finished: subtest: stopping the service closes the port" in run.stderr
    assert not leftovers(tmp_path, wait=3)


def test_pytest_template_runs_every_test(tmp_path, guest_dir, leftovers):
    _, run = write_and_run(tmp_path, "pytest")
    # test_commands x2, the file left behind, and the isolated test that no longer sees it
    assert "4 passed" in run.stdout, run.stdout[-3000:]
    assert not leftovers(tmp_path, wait=3)


def test_traced_template_exports_to_the_collector_of_the_standard_variables(
    tmp_path, guest_dir, leftovers
):
    with OtlpReceiver() as r:
        env: dict[str, str | None] = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": r.endpoint,
            "OTEL_SERVICE_NAME": "templates",
            # unset: settings of this environment that would send the spans elsewhere
            **dict.fromkeys(
                ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER"]
            ),
            "TRACEPARENT": None,
        }
        _, run = write_and_run(tmp_path, "traced", env)
        assert r.wait_for(lambda spans: any(s.name == "run my_traced.py" for s in spans))
    assert not r.errors, r.errors
    root = r.one("run my_traced.py")
    assert root.resource["service.name"] == "templates"
    assert {s.trace_id for s in r.spans} == {root.trace_id}
    ids = r.by_id()
    subtests = {s.name: s for s in r.spans if s.attributes.get("nixos_test.kind") == "subtest"}
    assert set(subtests) == {
        "the machine is up",
        "nested blocks are spans too",
        "a span from inside the guest",
    }
    assert ids[r.one("prepare some files").parent_id] is subtests["nested blocks are spans too"]
    assert r.one("boot machine").status_code == 1
    # the span the guest posted itself, under the subtest its command ran in
    guest = r.one("guest work")
    assert guest.content_type == "application/json" and guest.resource["service.name"] == "guest"
    assert ids[guest.parent_id] is subtests["a span from inside the guest"]
    assert "no span from the guest" not in run.stderr
    assert not leftovers(tmp_path, wait=3)
