"""The HTML report of real runs, rendered by headless Chromium: its DOM after the page's
script drew the timeline, and the pixels of a screenshot of it."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# colours of the report's stylesheet
BOOT = (0xE3, 0x9B, 0x22)
SUBTEST = (0x8E, 0x9A, 0xE0)
FAILED = (0xD0, 0x31, 0x2D)
PASSED = (0x2E, 0x9B, 0x4F)


def chromium() -> str:
    found = shutil.which("chromium")
    assert found, "chromium is installed by scripts/setup-system.sh"
    return found


def render(report: Path, tmp: Path) -> tuple[str, dict[tuple[int, int, int], int]]:
    """The DOM after the page's scripts ran, and a colour histogram of a screenshot."""
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    env = dict(os.environ, HOME=str(tmp))  # chromium writes its profile there
    dom = subprocess.run(
        [*args, "--dump-dom", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    ).stdout
    shot = tmp / "report.png"
    subprocess.run(
        [*args, "--window-size=1400,1600", f"--screenshot={shot}", report.as_uri()],
        capture_output=True,
        timeout=120,
        env=env,
        check=True,
    )
    return dom, colour_histogram(shot.read_bytes())


def colour_histogram(png: bytes) -> dict[tuple[int, int, int], int]:
    """Pixel counts per RGB colour of an 8-bit, non-interlaced RGB(A) PNG."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    counts: dict[tuple[int, int, int], int] = {}
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        for x in range(0, stride, bpp):
            rgb = (line[x], line[x + 1], line[x + 2])
            counts[rgb] = counts.get(rgb, 0) + 1
        prev = line
    return counts


class Dom(HTMLParser):
    """The elements of interest: lanes, bars, and text by element id."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.lanes: list[str] = []
        self.bars: list[dict[str, str]] = []
        self.by_id: dict[str, str] = {}
        self.images: list[str] = []
        self.summaries: list[str] = []
        self._open: list[tuple[str, dict[str, str], list[str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(a.get("src", ""))
            return
        if tag in ("br", "meta", "link", "input", "hr"):
            return
        if a.get("class") == "lane":
            self.lanes.append(a.get("data-lane", ""))
        self._open.append((tag, a, []))

    def handle_data(self, data: str) -> None:
        for _, _, text in self._open:
            text.append(data)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            t, a, text = self._open.pop()
            joined = "".join(text)
            if "bar" in a.get("class", "").split() and "data-kind" in a:
                self.bars.append({**a, "text": joined})
            if "id" in a:
                self.by_id[a["id"]] = joined
            if t == "summary":
                self.summaries.append(joined)
            if t == tag:
                return


def near(counts: dict[tuple[int, int, int], int], colour: tuple[int, int, int]) -> int:
    """Pixels within a small distance of `colour` (anti-aliasing, colour management)."""
    return sum(
        n
        for rgb, n in counts.items()
        if all(abs(p - q) <= 6 for p, q in zip(rgb, colour, strict=True))
    )


def test_the_example_report_renders_its_timeline(tmp_path, guest_dir):
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    r = subprocess.run(
        ["nixos-test-ng", "run", str(EXAMPLES / "vlan_echo.py"), "-m", "server:1", "-m"]
        + ["client:1", "--", "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    report = out / "report.html"
    assert f"HTML report: {report}" in r.stderr
    assert "timing summary:" in r.stderr and "boot (start → connected): " in r.stderr

    dom_text, colours = render(report, tmp_path)
    dom = Dom(dom_text)
    assert dom.by_id["status"] == "passed"
    assert "failures" not in dom.by_id
    # the page's script drew a lane per machine, one for tests and one for the driver
    assert dom.lanes == ["tests", "driver", "client", "server"], dom.lanes
    boots = sorted(b["text"] for b in dom.bars if b["data-kind"] == "boot")
    assert boots == ["boot client", "boot server"]
    subtests = {b["text"] for b in dom.bars if b["data-kind"] == "subtest"}
    assert subtests == {
        "the server listens on port 8000",
        "the client reaches the server over the VLAN",
        "blocking the client's VLAN link cuts it off",
    }
    commands = [b["text"] for b in dom.bars if b["data-kind"] == "operation"]
    assert "ping -c 1 -W 1 server" in commands
    assert not [b for b in dom.bars if "error" in b["class"].split()]
    assert any(b["style"].startswith("left:") and "width:" in b["style"] for b in dom.bars)
    # each machine's console log, folded
    assert {s.split(" (")[0] for s in dom.summaries} >= {"client", "server"}

    # the screenshot shows the timeline: boot bars and subtest bands, the green badge
    assert near(colours, BOOT) > 2000, "no boot bars in the rendered page"
    assert near(colours, SUBTEST) > 2000, "no subtest bands in the rendered page"
    assert near(colours, PASSED) > 100
    assert near(colours, FAILED) < 200  # the legend's swatch only


FAILING = """\
machine.start()
machine.succeed("echo the-console-says-hi > /dev/console")
machine.screenshot("before")
with subtest("a failing check"):
    machine.succeed("echo broken; exit 7")
"""


def test_a_failed_run_reports_its_traceback_console_and_screenshot(vm_env, tmp_path):
    run = vm_env.run({"machine": []}, FAILING)
    assert run.returncode == 1, run.stderr[-3000:]
    report = vm_env.out / "report.html"
    dom_text, colours = render(report, tmp_path)
    dom = Dom(dom_text)
    assert dom.by_id["status"] == "failed"
    failure = dom.by_id["failures"]
    assert "Traceback" in failure and 'machine.succeed("echo broken; exit 7")' in failure
    assert "exit code 7" in failure
    errors = [b for b in dom.bars if "error" in b["class"].split()]
    assert {b["text"] for b in errors} >= {"a failing check", "echo broken; exit 7"}
    assert [s for s in dom.images if s.startswith("data:image/png;base64,")], dom.images
    assert "the-console-says-hi" in dom.by_id["consoles"]
    assert "machine: before" in dom.by_id["screenshots"]
    assert near(colours, FAILED) > 500, "the failure is not red in the rendered page"
