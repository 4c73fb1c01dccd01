"""Screens on Firecracker and Cloud Hypervisor machines without a guest: the whole host path of
the guest X display capture (docs/firecracker.md, "Screens") through each VMM's stand-in with
its fake runner and a fake guest (the real agent behind the hybrid vsock socket, tests/fakes), whose
"X display" is made of parts: a socket at /tmp/.X11-unix/X0 (in a mount namespace of the fake
guest's own, so the host's /tmp/.X11-unix is untouched), a fake `xwd` printing an XWD file, a
process named `Xvfb` with `:0 -fbdir DIR` and an XWD file in DIR."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fakes import VSOCK_GUEST
from nixos_test_ng import _native
from support.png import read_rgb_png

STANDINS = Path(__file__).resolve().parents[1] / "standins"


class Vmm:
    def __init__(self, kind: str, machine: str, backend: str, variable: str) -> None:
        self.kind, self.machine, self.backend, self.variable = kind, machine, backend, variable


VMMS = [
    Vmm("firecracker", "fc", "Firecracker", "NIXOS_TEST_NG_FIRECRACKER"),
    Vmm("cloud-hypervisor", "ch", "Cloud Hypervisor", "NIXOS_TEST_NG_CLOUD_HYPERVISOR"),
]

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0, reason="the fake guest's private /tmp/.X11-unix needs root"
    ),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)"),
]


def xwd(width: int, height: int, pixel) -> bytes:
    """An XWD file as Xvfb writes it at depth 24: 32 bits per pixel, LSB first, TrueColor, a
    window name and a colormap TrueColor does not use; `pixel(x, y)` is (r, g, b)."""
    name = b"Xvfb main window\0"
    ncolors = 4
    fields = [100 + len(name), 7, 2, 24, width, height, 0, 0, 32, 0, 32, 32, width * 4, 4,
              0xFF0000, 0xFF00, 0xFF, 8, 256, ncolors, width, height, 0, 0, 0]  # fmt: skip
    data = struct.pack(">25I", *fields) + name + b"\x55" * (12 * ncolors)
    for y in range(height):
        for x in range(width):
            r, g, b = pixel(x, y)
            data += bytes((b, g, r, 0))
    return data


def stripes(x: int, y: int) -> tuple[int, int, int]:
    return (255, 0, 0) if x < 10 else (0, 0, 255) if y < 5 else (255, 255, 255)


def checker(x: int, y: int) -> tuple[int, int, int]:
    return (0, 0, 0) if (x // 4 + y // 4) % 2 else (200, 200, 200)


@pytest.fixture(params=VMMS, ids=["firecracker", "cloud_hypervisor"])
def vmm(request) -> Vmm:
    return request.param


@pytest.fixture
def x_guest(driver_env, vmm):
    """The fake guest in a mount namespace with a private, empty /tmp/.X11-unix, `bin/` first
    on its PATH (where a test puts a fake `xwd`)."""
    os.makedirs("/tmp/.X11-unix", mode=0o1777, exist_ok=True)
    agent = driver_env.tmp / "nixos-test-ng-agent"
    agent.write_bytes(_native.agent_binary())
    agent.chmod(0o755)
    guest = driver_env.tmp / "guest"
    (guest / "bin").mkdir(parents=True)
    vsock = driver_env.state_dir(vmm.machine) / "vsock.sock"
    env = dict(os.environ, PATH=f"{guest / 'bin'}:{os.environ['PATH']}")
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs ntng-x11 /tmp/.X11-unix && exec "$@"', "sh",
         sys.executable, str(VSOCK_GUEST), str(vsock), str(agent), str(guest)],
        start_new_session=True, stdin=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    yield guest
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def start_script(driver_env, vmm: Vmm) -> Path:
    for f in ("vmlinux", "initrd", "root.img"):
        (driver_env.work / f).write_text(f)
    config = {
        "kernel": str(driver_env.work / "vmlinux"),
        "initrd": str(driver_env.work / "initrd"),
        "root_disk": str(driver_env.work / "root.img"),
        "cmdline": "console=ttyS0",
    }
    body = f"#!/bin/sh\ncat <<'EOF'\n{json.dumps(config)}\nEOF\n"
    return driver_env.write_script(f"run-{vmm.machine}-{vmm.kind}", body, executable=True)


SCRIPT = """
    import glob, os, subprocess, sys, time
    from nixos_test_ng import MachineError, Unsupported

    GUEST, OUT, M = {guest!r}, {out!r}, {machine}

    def raised(kind, call):
        try:
            call()
        except kind as e:
            return str(e)
        raise SystemExit(f"{{call}} did not raise {{kind.__name__}}")

    def put(path, text):
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)

    M.start()
    print("NO-X:", raised(Unsupported, lambda: M.screenshot(OUT + "/none.png")))
    M.succeed(
        "python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind(\\"/tmp/.X11-unix/X0\\")'"
    )
    print("NO-TOOL:", raised(Unsupported, lambda: M.get_screen_text()))

    put(GUEST + "/bin/xwd", "#!/bin/sh\\necho 'xwd: unable to open display' >&2\\nexit 1\\n")
    print("XWD-FAILS:", raised(MachineError, lambda: M.screenshot(OUT + "/x.png")))

    put(GUEST + "/bin/xwd", '#!/bin/sh\\n[ "$*" = "-root -silent -display :0" ] || exit 2\\n'
        'cat "$XWD_FILE"\\n'.replace("$XWD_FILE", GUEST + "/stripes.xwd"))
    M.screenshot(OUT + "/xwd.png")
    t.assertEqual(glob.glob("/tmp/ntng-screen.*"), [])  # xwd's temporary file is gone

    # an Xvfb keeping its framebuffer file comes first (no xwd run)
    os.remove(GUEST + "/bin/xwd")
    fbdir = GUEST + "/fb"
    # a process named Xvfb (its comm, as the capture looks for) with Xvfb's arguments
    code = "import ctypes, time; ctypes.CDLL(None).prctl(15, b'Xvfb', 0, 0, 0); time.sleep(600)"
    xvfb = subprocess.Popen([sys.executable, "-c", code, ":0", "-fbdir", fbdir])
    try:
        comm = f"/proc/{{xvfb.pid}}/comm"
        for _ in range(3000):
            if open(comm).read().strip() == "Xvfb":
                break
            time.sleep(0.01)
        else:
            raise SystemExit("the fake Xvfb did not rename itself")
        M.screenshot(OUT + "/fbdir.png")
        texts = M.get_screen_text_variants()  # the same OCR as a QEMU VM's screen
        t.assertEqual(len(texts), 3)
        with open(fbdir + "/Xvfb_screen0", "wb") as f:
            f.write(b"garbage" * 5)
        print("GARBAGE:", raised(MachineError, lambda: M.screenshot(OUT + "/bad.png")))
        print("WAIT-GARBAGE:", raised(MachineError, lambda: M.wait_for_text("x", timeout=30)))
    finally:
        xvfb.kill()
        xvfb.wait()
    print("SCREENS-DONE")
"""


def test_screens_from_a_fake_guest_x_display(driver_env, run_driver, vmm, x_guest):
    (x_guest / "stripes.xwd").write_bytes(xwd(20, 10, stripes))
    (x_guest / "fb").mkdir()
    (x_guest / "fb" / "Xvfb_screen0").write_bytes(xwd(16, 12, checker))
    test = driver_env.write_script(
        "t.py",
        textwrap.dedent(
            SCRIPT.format(guest=str(x_guest), out=str(driver_env.out), machine=vmm.machine)
        ),
    )
    env = {vmm.variable: str(STANDINS / vmm.kind), "NTNG_STANDIN_RUNNER": "fake",
           "NTNG_FAKE_RUNNER_DIR": str(driver_env.tmp)}  # fmt: skip
    r = run_driver(
        ["--start-scripts", start_script(driver_env, vmm), "--", test], env=env, timeout=180
    )
    assert r.returncode == 0, r
    assert "SCREENS-DONE" in r.stdout, r
    said = dict(re.findall(r"^([A-Z-]+): (.*)$", r.stdout, re.M))
    backend = f"{vmm.machine}: {{}}: not supported by the {vmm.backend} backend ({{}})"
    assert said["NO-X"] == backend.format(
        "screenshot",
        "no X display found in the guest: DISPLAY :0 is not running, no /tmp/.X11-unix/X0",
    )
    assert said["NO-TOOL"] == backend.format(
        "get_screen_text",
        "the X display :0 runs, but the guest has neither an Xvfb with -fbdir nor xwd "
        "(x11-apps) to capture it",
    )
    assert said["XWD-FAILS"] == (
        f"{vmm.machine}: capturing the guest's X display :0: xwd -root -display :0 failed: "
        "xwd: unable to open display"
    )
    assert said["GARBAGE"] == (
        f"{vmm.machine}: not a usable XWD screen capture: truncated header (35 bytes)"
    )
    assert said["WAIT-GARBAGE"] == said["GARBAGE"]
    # the captures, converted into the PNGs a QEMU VM's screenshot is
    width, height, rgb = read_rgb_png(driver_env.out / "xwd.png")
    assert (width, height) == (20, 10)
    assert rgb == b"".join(bytes(stripes(x, y)) for y in range(10) for x in range(20))
    width, height, rgb = read_rgb_png(driver_env.out / "fbdir.png")
    assert (width, height) == (16, 12)
    assert rgb == b"".join(bytes(checker(x, y)) for y in range(12) for x in range(16))
    assert not (driver_env.out / "none.png").exists()
    assert not (driver_env.out / "bad.png").exists()
