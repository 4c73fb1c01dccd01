"""Screens on a machine without a display device, end to end: a Firecracker machine (through
the Firecracker stand-in's QEMU runner, tests/standins/README.md) on the systemd guest's X11
variant (`guest build --systemd --x11`), whose X display the driver captures from inside the
guest (docs/firecracker.md, "Screens"): Xvfb's framebuffer file, then `xwd`, converted on the
host and read by the same OCR as a QEMU VM's screen.

The X11 variant is built on first use into `build/guest-x11-systemd` of this repository (or
`$NIXOS_TEST_NG_X11_GUEST_DIR-systemd`), beside a copy of the busybox guest whose kernel it
boots: never into the default guest directory, and never by `make demo`."""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest
from support.png import read_rgb_png

pytestmark = [pytest.mark.vm, pytest.mark.one_transport]

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "tests" / "standins" / "firecracker"
X11_DIR_VAR = "NIXOS_TEST_NG_X11_GUEST_DIR"


@pytest.fixture(scope="module")
def guest_dir() -> Path:
    """Overrides conftest's: a guest directory whose systemd guest is the X11 variant."""
    from nixos_test_ng.guest import GuestError, ensure_built
    from nixos_test_ng.guest.systemd_guest import build_systemd

    busybox = ensure_built()
    x11 = Path(os.environ.get(X11_DIR_VAR) or REPO / "build" / "guest-x11").absolute()
    if not (x11 / "manifest.json").exists():
        x11.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", "--reflink=auto", str(busybox), str(x11)], check=True)
    try:
        build_systemd(x11, x11=True)
    except GuestError as e:
        pytest.skip(f"the systemd guest's X11 variant cannot be built here: {e}")
    return x11


@pytest.fixture(autouse=True)
def firecracker(monkeypatch) -> None:
    """The stand-in (unless NIXOS_TEST_NG_FIRECRACKER names a real Firecracker) booting guests
    under QEMU, over the agent (Firecracker's only shell)."""
    monkeypatch.setenv(
        "NIXOS_TEST_NG_FIRECRACKER", os.environ.get("NIXOS_TEST_NG_FIRECRACKER") or str(STANDIN)
    )
    monkeypatch.setenv("NTNG_STANDIN_RUNNER", "qemu")
    monkeypatch.delenv("NIXOS_TEST_NG_TRANSPORT", raising=False)


SCREENS = r"""
    from nixos_test_ng import Unsupported

    sd.wait_for_unit("multi-user.target")

    # no X server yet: each screen call names what the guest lacks
    for call in (
        lambda: sd.screenshot("none"),
        lambda: sd.get_screen_text(),
        lambda: sd.wait_for_text("anything", timeout=30),
    ):
        try:
            call()
        except Unsupported as e:
            print("NO-X:", e, flush=True)
        else:
            raise SystemExit("a screen call without an X server did not raise Unsupported")

    def show(unit, text):
        sd.succeed(
            f"systemd-run --unit={unit} --setenv=DISPLAY=:0 -- xmessage -geometry +40+40 "
            f"-fn 10x20 '{text}'"
        )
        sd.wait_until_succeeds(
            "xwininfo -display :0 -root -tree | grep -q xmessage", timeout=120
        )

    # Xvfb keeping its framebuffer as an XWD file: nothing else needed to capture it (-wr: a
    # white root window; tesseract misses dark text in a large black field)
    sd.succeed(
        "mkdir -p /run/xvfb && systemd-run --unit=xvfb -- "
        "Xvfb :0 -screen 0 800x600x24 -wr -fbdir /run/xvfb -nolisten tcp"
    )
    sd.wait_until_succeeds("test -S /tmp/.X11-unix/X0", timeout=120)
    show("msg", "HELLO FROM THE GUEST 42")
    sd.wait_for_text(r"HELLO FROM THE GUEST \d+", timeout=300)
    sd.screenshot("fbdir")
    t.assertIn("HELLO", "\n".join(sd.get_screen_text_variants()))
    print("FBDIR-OK", flush=True)

    # an X server without a framebuffer file: `xwd -root`, its temporary file removed after
    sd.succeed("systemctl stop msg xvfb")
    sd.succeed("systemd-run --unit=xvfb2 -- Xvfb :0 -screen 0 640x480x24 -wr -nolisten tcp")
    sd.wait_until_succeeds("test -S /tmp/.X11-unix/X0", timeout=120)
    show("msg2", "SECOND SCREEN 7")
    sd.wait_for_text(r"SECOND SCREEN", timeout=300)
    sd.screenshot("xwd.png")
    t.assertEqual(sd.succeed("ls /tmp | grep -c '^ntng-screen' || true").strip(), "0")
    print("XWD-OK", flush=True)
"""


def test_firecracker_screens_through_the_guest_x_display(vm_env, leftovers):
    """One boot of a Firecracker machine on the X11 guest: no X (Unsupported), Xvfb's
    framebuffer file (screenshot, OCR, wait_for_text), then `xwd`."""
    r = vm_env.run(
        {"sd": []}, textwrap.dedent(SCREENS), kinds={"sd": "systemd-firecracker"}, timeout=900
    )
    shown = f"rc={r.returncode}\n--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-8000:]}"
    assert r.returncode == 0, shown
    no_x = re.findall(r"NO-X: (.*)", r.stdout)
    assert len(no_x) == 3, shown
    for line, op in zip(no_x, ("screenshot", "get_screen_text", "wait_for_text"), strict=True):
        assert line == (
            f"sd: {op}: not supported by the Firecracker backend (no X display found in the "
            "guest: DISPLAY :0 is not running, no /tmp/.X11-unix/X0)"
        ), line
    assert "FBDIR-OK" in r.stdout and "XWD-OK" in r.stdout, shown
    # the PNGs have the X screens' sizes, and show the text
    for name, size in (("fbdir.png", (800, 600)), ("xwd.png", (640, 480))):
        width, height, rgb = read_rgb_png(vm_env.out / name)
        assert (width, height) == size, name
        # dark text on the white root window: some dark pixels, most of them light
        dark = sum(1 for i in range(0, len(rgb), 3) if max(rgb[i : i + 3]) < 128)
        assert 0 < dark < width * height // 4, (name, dark)
    assert not leftovers(vm_env.root)
