"""pytest-xdist (`pytest -n N`) with the plugin's machines: who starts machines, and the one
XML log the controller writes from its workers' logs.

Each worker (`gw0`, `gw1`, ...) has a driver of its own, built from the same command line as
worker `<id>` of the run (`Config.for_worker` in the engine: its own tmp dir with the state
directories, sockets, VLAN switches and shared directory; its own output directory
`<out>/<id>`; report files named `<name>-<id>.<ext>`). The controller, which runs no tests,
starts no machines. pytest's `--junitxml` is the controller's: every report a worker makes
reaches it; a subtest's comes under its test's node id (pytest-xdist accepts no other) with
its own in an attribute, which the controller puts back before JUnit and the terminal see it.
The XML log of `LOGFILE` is written by each worker to `<name>-<id>.<ext>` and merged by the
controller into `LOGFILE` at the end, each worker's log in a block `pytest-xdist worker <id>`.
The HTML report (with `--nixos-out`) stays one per worker, `report-<id>.html`, which the
controller lists at the end: its timeline is one driver's.
"""

from __future__ import annotations

import contextlib
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "SUBTEST_NODEID",
    "Controller",
    "is_controller",
    "merge_xml_logs",
    "report_html",
    "report_xml_log",
    "worker_id",
]

#: The key in a worker's `workeroutput`: its HTML report.
HTML_REPORT_KEY = "nixos_test_ng_html_report"
#: The attribute of a subtest's report from a worker: its node id `<test>::<subtest>` (the
#: worker sends it under its test's node id, the only one pytest-xdist accepts).
SUBTEST_NODEID = "ntng_subtest_nodeid"

#: The key in a worker's `workeroutput` (sent to the controller as the worker finishes):
#: `(LOGFILE, this worker's part)`.
XML_LOG_KEY = "nixos_test_ng_xml_log"


def worker_id(config: pytest.Config) -> str | None:
    """This process's worker id (`gw0`, ...) when it is a pytest-xdist worker, else None."""
    workerinput = getattr(config, "workerinput", None)
    return None if workerinput is None else str(workerinput["workerid"])


def is_controller(config: pytest.Config) -> bool:
    """True in the pytest-xdist controller of a distributed run (`-n N` with N > 0), which
    runs no tests itself."""
    return worker_id(config) is None and getattr(config.option, "dist", "no") != "no"


def report_xml_log(config: pytest.Config, target: str | None, part: str | None) -> None:
    """A worker tells the controller where its XML log is, and which file it belongs in."""
    output = getattr(config, "workeroutput", None)
    if output is not None and target and part and target != part:
        output[XML_LOG_KEY] = (target, part)


def report_html(config: pytest.Config, path: str) -> None:
    """A worker tells the controller where its HTML report is."""
    output = getattr(config, "workeroutput", None)
    if output is not None:
        output[HTML_REPORT_KEY] = path


def _worker_order(worker: str) -> tuple[int, str]:
    number = re.sub(r"\D", "", worker)
    return (int(number) if number else 0, worker)


def merge_xml_logs(target: Path, parts: dict[str, Path]) -> list[str]:
    """Writes `target` as one `<logfile>` holding each worker's log (by worker id) in a
    `<nest>` headed `pytest-xdist worker <id>`, and removes the parts it merged. A part that
    cannot be read is kept and named in a `<line>`; returns warnings about such parts."""
    root = ET.Element("logfile")
    warnings = []
    for worker in sorted(parts, key=_worker_order):
        part = parts[worker]
        nest = ET.SubElement(root, "nest")
        ET.SubElement(nest, "head").text = f"pytest-xdist worker {worker}"
        try:
            nest.extend(list(ET.parse(part).getroot()))
        except (OSError, ET.ParseError) as e:
            message = f"the XML log of worker {worker} ({part}) cannot be read: {e}"
            ET.SubElement(nest, "line").text = message
            warnings.append(message)
            parts = {k: v for k, v in parts.items() if k != worker}
    ET.indent(root, space="")
    target.write_bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n")
    for part in parts.values():
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    return warnings


class Controller:
    """The plugin in pytest-xdist's controller: it starts no machines, and merges the
    workers' XML logs once they have all finished."""

    def __init__(self) -> None:
        #: LOGFILE -> worker id -> the worker's part.
        self.xml_logs: dict[str, dict[str, Path]] = {}
        #: worker id -> its HTML report.
        self.html_reports: dict[str, str] = {}

    def pytest_report_header(self, config: pytest.Config) -> str:
        return "nixos-test-ng: each pytest-xdist worker starts machines of its own"

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # before JUnit and the terminal see it: a subtest is a result of its own
        nodeid = getattr(report, SUBTEST_NODEID, None)
        if nodeid:
            report.nodeid = nodeid

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", None) or {}
        worker = str(node.workerinput["workerid"])
        if XML_LOG_KEY in output:
            target, part = output[XML_LOG_KEY]
            self.xml_logs.setdefault(target, {})[worker] = Path(part)
        if HTML_REPORT_KEY in output:
            self.html_reports[worker] = output[HTML_REPORT_KEY]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.html_reports:
            terminalreporter.write_sep("-", "nixos-test-ng HTML reports, one per worker")
            for worker in sorted(self.html_reports, key=_worker_order):
                terminalreporter.write_line(f"{worker}: {self.html_reports[worker]}")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        for target, parts in self.xml_logs.items():
            for message in merge_xml_logs(Path(target), parts):
                reporter = session.config.pluginmanager.get_plugin("terminalreporter")
                if reporter is not None:
                    reporter.write_line(f"nixos-test-ng: warning: {message}")
