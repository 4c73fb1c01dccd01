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


SECRET_LINE = r"pdb is waiting for a connection on 127\.0\.0\.1:4444; send the secret (\S+) as"


def closed_without_a_word(conn: socket.socket) -> bool:
    try:
        return conn.recv(4096) == b""
    except ConnectionResetError:  # closed with our unread bytes in its buffer
        return True


def wait_for_secret(p, nth: int) -> bytes:
    """The secret of the `nth` breakpoint, from its log line."""
    text = p.wait_for_output(f"(?s)({SECRET_LINE}.*){{{nth}}}")
    return re.findall(SECRET_LINE, text)[nth - 1].encode()


def test_debug_hook_refuses_a_client_without_the_secret(
    driver_env, fake_vm, start_driver, write_script
):
    vm = fake_vm("alpha")
    test = write_script("t.py", 'debug.breakpoint()\nalpha.succeed("true")\n')
    p = start_driver(
        ["--vm-start-scripts", vm.script, "--debug-hook-attach", "attach-me", "--", test]
    )
    secret = wait_for_secret(p, 1)
    # a wrong first line, then a client that closes without a line: both logged and closed
    for attempt in (b"not-the-secret\np 1+1\n", b""):
        conn = connect(4444)
        if attempt:
            conn.sendall(attempt)
        else:
            conn.shutdown(socket.SHUT_WR)
        assert closed_without_a_word(conn), "a refused client gets no prompt, only the close"
        conn.close()
    p.wait_for_output(
        r"(?s)(refused a connection from 127\.0\.0\.1:\d+: its first line was not the secret.*){2}"
    )
    # the driver still waits for the right client
    conn = connect(4444)
    conn.sendall(secret + b"\n")
    read_until(conn, b"(Pdb) ")
    conn.sendall(b"c\n")
    conn.close()
    r = p.wait(60)
    assert r.returncode == 0, r
    assert secret.decode() in r.stderr


def test_debug_hook_breakpoint_and_post_mortem(driver_env, fake_vm, start_driver, write_script):
    vm = fake_vm("alpha")
    test = write_script(
        "t.py",
        'answer = 6 * 7\ndebug.breakpoint()\nalpha.succeed("true")\nt.assertEqual(answer, 41)\n',
    )
    p = start_driver(
        ["--vm-start-scripts", vm.script, "--debug-hook-attach", "attach-me", "--", test]
    )
    # the breakpoint: a pdb prompt in the script's frame, for the client that sends the secret
    secret = wait_for_secret(p, 1)
    conn = connect(4444)
    conn.sendall(secret + b"\n")
    assert b"(Pdb) " in read_until(conn, b"(Pdb) ")
    conn.sendall(b"p answer\n")
    assert b"42" in read_until(conn, b"(Pdb) ")
    conn.sendall(b"c\n")
    conn.close()
    # the failed assertion: a post-mortem session in the failing frame, with a new secret
    second = wait_for_secret(p, 2)
    assert second != secret
    conn = connect(4444)
    conn.sendall(second + b"\np answer + 1\n")  # pdb reads what follows the secret's line
    read_until(conn, b"(Pdb) ")
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
