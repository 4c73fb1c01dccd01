"""What the fake QEMU cannot show, on the busybox VM: its guest is host bash on a socket pair
(no tty, no job control) and it closes the console when the shell exits. Here the backdoor
runs on the real hvc0 tty, init respawns it when it exits, and ttyS0 is a real serial port.

- Ctrl-C at `shell_interact()`'s prompt interrupts the guest command (a job with a process
  group of its own on hvc0), not the driver, and the shell goes on.
- A backdoor that exits is respawned by the guest's init; `connected = False` makes the
  next command wait for the new one's handshake.
- `console_interact()` sends the terminal's lines to the serial port, where a guest process
  reads them.
"""

from __future__ import annotations

import re

import pytest
from support.driver import driver_command
from support.terminal import CTRL_C, CTRL_D, Terminal

pytestmark = pytest.mark.vm

BOOT_S = 300  # hang detectors: a TCG boot on a loaded machine
COMMAND_S = 60


@pytest.fixture
def backdoor(monkeypatch):  # the tests that use it are marked one_transport
    """These tests are about the backdoor on hvc0: no guest agent."""
    monkeypatch.setenv("NIXOS_TEST_NG_TRANSPORT", "backdoor")


@pytest.mark.one_transport
def test_ctrl_c_in_shell_interact_interrupts_the_guest_job(vm_env, backdoor):
    scripts = vm_env.scripts({"machine": []})
    argv = [*driver_command(), "--interactive", "--vm-start-scripts", scripts["machine"]]
    (vm_env.root / "xdg").mkdir(exist_ok=True)
    with Terminal(argv, vm_env.environ(), vm_env.root) as term:
        term.expect(b">>> ")
        term.type(b"machine.shell_interact()\n")
        term.expect(b"machine: interactive shell", timeout=BOOT_S)
        term.expect(b"machine$ ")
        # the backdoor's shell reads the tty; a command is a job with a process group of its own
        term.type(b"echo on-$(readlink /proc/$$/fd/0)\n")
        term.expect(b"on-/dev/hvc0", timeout=COMMAND_S)
        term.expect(b"machine$ ")
        pgrp = "$(cut -d' ' -f5 /proc/{}/stat)"
        own = f"echo own-group-$(( {pgrp.format('self')} != {pgrp.format('$$')} ))\n"
        term.type(own.encode())
        term.expect(b"own-group-1", timeout=COMMAND_S)
        term.expect(b"machine$ ")
        term.type(b"echo job-$(grep SigIgn /proc/self/status | tr -d '\\t')\n")
        ignored = term.expect(b"machine$ ", timeout=COMMAND_S)
        term.type(b"echo started-$((2 * 3)); sleep 30; echo reached-$((3 * 3))\n")
        term.expect(b"started-6", timeout=COMMAND_S)  # the job runs in the guest now
        term.type(CTRL_C)  # the terminal's SIGINT goes to the driver, which forwards it
        # interrupted or not, the prompt comes back (at the latest when the sleep ends)
        after_ctrl_c = term.expect(b"machine$ ", timeout=COMMAND_S)
        # the driver is still there and the guest's sleep is gone
        term.type(b"echo left-$(ps | grep -c '[s]leep 30')\n")
        term.expect(b"left-0", timeout=COMMAND_S)
        term.expect(b"machine$ ")
        term.type(CTRL_D)  # leaves shell_interact
        term.expect(b">>> ")
        term.type(b"print('after', machine.succeed('echo $((6 * 7))').strip())\n")
        term.expect(b"after 42", timeout=COMMAND_S)
        term.expect(b">>> ")
        term.type(CTRL_D)  # and the REPL
        assert term.wait(timeout=COMMAND_S) == 0, term.text()
    # the guest job was interrupted: its status is SIGINT's, and it never got to its next echo
    assert b"SigIgn:0000000000000000" in ignored, ignored
    assert b"[exit status 130]" in after_ctrl_c, after_ctrl_c
    assert b"reached-9" not in term.shown, term.text()


RESPAWN = r"""
machine.start()
first = machine.succeed("echo $$").strip()
# the backdoor's shell exits; the guest's init starts a new one on hvc0, which says hello again
machine.shell.send(b"exit 0\n")
machine.connected = False
second = machine.succeed("echo $$").strip()
t.assertTrue(machine.connected)
t.assertNotEqual(first, second)
t.assertEqual(machine.succeed("echo again"), "again\n")
print("RESPAWN-OK", first, second)
"""


@pytest.mark.one_transport
def test_a_backdoor_that_exits_is_respawned_with_a_new_handshake(vm_env, backdoor):
    r = vm_env.run({"machine": []}, RESPAWN, timeout=BOOT_S)
    assert r.returncode == 0, r.stderr[-5000:]
    assert re.search(r"^RESPAWN-OK \d+ \d+$", r.stdout, re.M), r.stdout
    assert r.stderr.count("machine: connected to guest root shell") == 2, r.stderr[-5000:]
    assert "init: backdoor exited with status 0; restarting it" in r.stderr, r.stderr[-5000:]


CONSOLE = r"""
machine.start()
# a reader on the guest's serial port (the kernel console ttyS0, QEMU's stdin and stdout)
machine.succeed("(head -n 2 /dev/ttyS0 > /tmp/serial-in) >/dev/null 2>&1 &")
machine.wait_until_succeeds("pidof head")
machine.console_interact()  # until the end of stdin, as Ctrl-D
machine.wait_until_succeeds("test $(wc -l < /tmp/serial-in) -eq 2", timeout=60)
print("GOT", repr(machine.succeed("cat /tmp/serial-in")))
"""


def test_console_interact_reaches_the_guest_serial_port(vm_env):
    r = vm_env.run({"machine": []}, CONSOLE, timeout=BOOT_S, input="first line\nsecond line\n")
    assert r.returncode == 0, r.stderr[-5000:]
    assert "GOT 'first line\\nsecond line\\n'" in r.stdout, r.stdout
