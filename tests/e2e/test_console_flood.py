"""A guest flooding its serial console with garbage (a 10 MiB line without a newline, NULs,
invalid UTF-8, ANSI escapes) on a real TCG VM: commands still work, the console log keeps
everything (read back from the state directory's console.log), the driver's log stays
readable, and the driver's peak RSS grows by far less than the flood's size.
"""

from __future__ import annotations

import pytest

# the console does not depend on the command transport: one run is enough
pytestmark = [pytest.mark.vm, pytest.mark.one_transport]

FLOOD_SCRIPT = r"""
import time

def peak_rss():
    with open("/proc/self/status") as f:
        line = next(l for l in f if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

machine.start()
machine.succeed("true")
log_file = machine.state_dir / "console.log"
t.assertTrue(log_file.is_file(), log_file)
t.assertEqual(log_file.stat().st_mode & 0o777, 0o600)

# the peak from here on is the flood's (writing 5 to clear_refs resets VmHWM)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = peak_rss()
machine.succeed(
    "{ head -c 10485760 /dev/zero | tr '\\0' x;"
    "  printf '\\0\\0nul\\377\\376bad\\033[1;31mred\\033[0m\\007\\r\\n';"
    "  { yes \"$(printf 'a boot line with \\033[32mcolour\\033[0m')\" | head -c 2097152 || true; };"
    "  echo FLOOD-DONE-17; } > /dev/ttyS0"
)

def wait_in_file(marker):
    # the reader catches up (the file is written as the console goes); only the file's
    # end is read, so the wait costs no memory
    for _ in range(1200):
        with open(log_file, "rb") as f:
            f.seek(max(0, log_file.stat().st_size - 4096))
            if marker in f.read():
                return
        time.sleep(0.1)
    raise AssertionError(f"{marker!r} never reached {log_file}")

wait_in_file(b"FLOOD-DONE-17")
growth = peak_rss() - before
print(f"FLOOD-RSS-GROWTH {growth}")
t.assertLess(growth, 40 * 1024 * 1024, growth)

machine.succeed("echo after-the-flood > /dev/ttyS0")
wait_in_file(b"after-the-flood")
t.assertEqual(machine.succeed("echo still-working").strip(), "still-working")
text = machine.get_console_log()
t.assertIn("FLOOD-DONE-17", text)
t.assertIn("after-the-flood", text)
t.assertIn("x" * 65536, text)
t.assertNotIn("x" * 65537, text)
t.assertIn("\0\0nul\ufffd\ufffdbad\x1b[1;31mred", text)
t.assertGreaterEqual(log_file.stat().st_size, 10 * 1024 * 1024 + 2 * 1024 * 1024)
"""


def test_a_flooding_guest_keeps_the_driver_bounded_and_its_log_readable(vm_env):
    r = vm_env.run({"machine": []}, FLOOD_SCRIPT, timeout=600)
    assert r.returncode == 0, r.stderr[-5000:]
    growth = [line for line in r.stdout.splitlines() if line.startswith("FLOOD-RSS-GROWTH")]
    assert len(growth) == 1, r.stdout
    print(growth[0])  # the figure, with -s
    # the driver's log escapes control characters: no raw ESC, NUL or BEL in it
    for raw in ("\x1b", "\x00", "\x07"):
        assert raw not in r.stderr
    assert "machine # \\x00\\x00nul\ufffd\ufffdbad\\x1b[1;31mred\\x1b[0m\\x07" in r.stderr
