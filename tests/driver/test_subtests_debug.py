"""`--keep-going` (go on after a failed subtest) and `--debug-hook-attach` (a pdb on a socket
at a breakpoint and after a failure), on the fake QEMU."""

from __future__ import annotations

import re
import socket
import subprocess
import time
import xml.etree.ElementTree as ET

SUBTESTS = """
with subtest("first"):
    alpha.succeed("true")
with subtest("second fails"):
    alpha.succeed("exit 4")
with subtest("third"):
    alpha.succeed("echo third-ran")
with subtest("fourth fails"):
    t.assertEqual(1, 2)
with subtest("fifth"):
    pass
"""


def junit_cases(path) -> dict[str, str]:
    """Case name -> "passed" or "failed"."""
    root = ET.parse(path).getroot()
    return {
        case.get("name"): "failed" if case.find("failure") is not None else "passed"
        for case in root.iter("testcase")
    }


def test_without_keep_going_the_first_failed_subtest_ends_the_script(
    driver_env, fake_vm, run_driver, write_script
):
    vm = fake_vm("alpha")
    test = write_script("t.py", SUBTESTS)
    args = ["--vm-start-scripts", vm.script, "--junit-xml", "junit.xml", "-o", driver_env.out]
    r = run_driver([*args, "--", test])
    assert r.returncode == 1, r
    assert "third-ran" not in r.stderr
    assert junit_cases(driver_env.out / "junit.xml") == {
        "first": "passed",
        "second fails": "failed",
    }


def test_keep_going_runs_every_subtest_and_fails_the_run(
    driver_env, fake_vm, run_driver, write_script
):
    vm = fake_vm("alpha")
    test = write_script("t.py", SUBTESTS)
    args = ["--vm-start-scripts", vm.script, "--junit-xml", "junit.xml", "-o", driver_env.out]
    r = run_driver([*args, "--keep-going", "--", test])
    assert r.returncode == 1, r
    assert "alpha: must succeed: echo third-ran" in r.stderr
    assert '!!! Test "second fails" failed with error: ' in r.stderr
    assert '!!! Test "fourth fails" failed with error: "1 != 2"' in r.stderr
    assert r.stderr.count("--keep-going: going on with the script") == 2
    assert "(finished: subtest: fifth" in r.stderr
    cases = junit_cases(driver_env.out / "junit.xml")
    assert cases == {
        "first": "passed",
        "second fails": "failed",
        "third": "passed",
        "fourth fails": "failed",
        "fifth": "passed",
    }
    # each failure carries its own traceback, with the script's line
    root = ET.parse(driver_env.out / "junit.xml").getroot()
    failures = {c.get("name"): c.find("failure") for c in root.iter("testcase")}
    second = ET.tostring(failures["second fails"], encoding="unicode")
    assert 'alpha.succeed("exit 4")' in second and "assertEqual" not in second


def connect(port: int, timeout: float = 30) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=30)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def read_until(conn: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = conn.recv(4096)
        assert chunk, f"connection closed; got {data!r}"
        data += chunk
    return data


def test_debug_hook_breakpoint_and_post_mortem(driver_env, fake_vm, start_driver, write_script):
    vm = fake_vm("alpha")
    test = write_script(
        "t.py",
        'answer = 6 * 7\ndebug.breakpoint()\nalpha.succeed("true")\nt.assertEqual(answer, 41)\n',
    )
    p = start_driver(
        ["--vm-start-scripts", vm.script, "--debug-hook-attach", "attach-me", "--", test]
    )
    # the breakpoint: a pdb prompt in the script's frame
    conn = connect(4444)
    assert b"(Pdb) " in read_until(conn, b"(Pdb) ")
    conn.sendall(b"p answer\n")
    assert b"42" in read_until(conn, b"(Pdb) ")
    conn.sendall(b"c\n")
    conn.close()
    # the failed assertion: a post-mortem session in the failing frame
    conn = connect(4444)
    read_until(conn, b"(Pdb) ")
    conn.sendall(b"p answer + 1\n")
    assert b"43" in read_until(conn, b"(Pdb) ")
    conn.sendall(b"c\n")
    conn.close()
    r = p.wait(60)
    assert r.returncode == 1, r
    patterns = re.findall(r"!!! Breakpoint reached, run 'sudo attach-me (\d{7})'", r.stderr)
    assert len(patterns) == 2, r.stderr
    # the `sleep <pattern>` that nixpkgs' attach script looks for is gone afterwards
    for pattern in patterns:
        assert subprocess.run(["pgrep", "-f", f"sleep {pattern}"]).returncode == 1
