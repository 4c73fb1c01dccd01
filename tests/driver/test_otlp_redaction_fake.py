"""OTLP headers hold credentials: their values reach the collector and nothing else, not the
terminal, the XML log, the JUnit XML or the HTML report, also when they are malformed."""

from __future__ import annotations

from pathlib import Path

from nixos_test_ng import procs

from tests.otlp_receiver import OtlpReceiver

SECRET = "s3cret-Tok3n-4711"


def everything_written(driver_env, r) -> dict[str, str]:
    """The run's stdout, stderr and every file it left in the output dir and the XML log."""
    texts = {"stdout": r.stdout, "stderr": r.stderr}
    for path in [*Path(driver_env.out).rglob("*"), Path(driver_env.work) / "log.xml"]:
        if path.is_file():
            texts[str(path)] = path.read_text(errors="replace")
    return texts


def run(driver_env, endpoint: str, headers: str, body: str = "start_all()\n"):
    vm = driver_env.fake_vm("alpha")
    script = driver_env.write_script("t.py", body)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_HEADERS": headers,
        "LOGFILE": str(driver_env.work / "log.xml"),
    }
    args = procs.driver_arguments({"alpha": vm.script})
    return driver_env.run_driver(
        ["-o", driver_env.out, "--junit-xml", "junit.xml", *args, "--", script], env=env
    )


def test_header_values_are_sent_and_shown_nowhere(driver_env):
    with OtlpReceiver() as receiver:
        # a failing test: error messages and tracebacks land in every report
        r = run(
            driver_env,
            receiver.endpoint,
            f"authorization=Bearer%20{SECRET},x-api-key={SECRET}",
            body="start_all()\nalpha.succeed('exit 3')\n",
        )
        assert receiver.wait_for(lambda spans: len(spans) > 0)
    assert r.returncode == 1, r
    assert receiver.headers[0]["authorization"] == f"Bearer {SECRET}"
    assert receiver.headers[0]["x-api-key"] == SECRET
    texts = everything_written(driver_env, r)
    assert {"junit.xml", "report.html"} <= {Path(k).name for k in texts}, list(texts)
    assert str(driver_env.work / "log.xml") in texts
    for where, text in texts.items():
        assert SECRET not in text, where


def test_a_malformed_header_is_named_not_quoted(driver_env):
    r = run(driver_env, "http://127.0.0.1:1", f"x-api-key={SECRET},Authorization: {SECRET}")
    assert r.returncode == 0, r
    assert "OTEL_EXPORTER_OTLP_HEADERS: entry 2 is not key=value" in r.stderr, r.stderr
    for where, text in everything_written(driver_env, r).items():
        assert SECRET not in text, where


def test_credentials_in_the_endpoint_url_are_refused_unshown(driver_env):
    r = run(driver_env, f"http://me:{SECRET}@127.0.0.1:1/?key={SECRET}", "")
    assert r.returncode == 0, r
    assert "credentials in the URL are not supported" in r.stderr, r.stderr
    for where, text in everything_written(driver_env, r).items():
        assert SECRET not in text, where
