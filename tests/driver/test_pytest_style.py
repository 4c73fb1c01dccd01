"""pytest-style scripts: detection, the driver running them under pytest with machines as
fixtures, arguments after the script, JUnit, plugins, and plain `pytest` with start scripts.
All on the fake QEMU."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

from nixos_test_ng.pytest_style import is_pytest_style

STYLE = """
import pytest

alpha.succeed("echo module-level-setup >&2")  # once, before the tests

def test_echo(alpha):
    assert alpha.succeed("echo hi") == "hi\\n"

@pytest.mark.parametrize("n", [1, 2, 3])
def test_double(alpha, n):
    assert int(alpha.succeed(f"echo $(({n} * 2))")) == n * 2

def test_fails(alpha):
    out = alpha.succeed("echo 41")
    assert int(out) == 42

def test_fixtures(machines, driver, vlans, subtest, log, t):
    assert [m.name for m in machines] == ["alpha"] and driver.machines == machines
    with subtest("inside"):
        t.assertEqual(vlans, [])
"""


def test_detection_reads_the_syntax_tree():
    assert is_pytest_style("def test_x():\n    pass\n")
    assert is_pytest_style("class TestThings:\n    def test_a(self): pass\n")
    assert not is_pytest_style("start_all()\nmachine.succeed('true')\n")
    # nested definitions and text that only looks like one do not count
    assert not is_pytest_style("if True:\n    def test_x(): pass\n")
    assert not is_pytest_style("s = 'def test_x(): pass'\n")
    assert not is_pytest_style("def helper():\n    def test_inner(): pass\n")


def run(driver_env, fake_vm, run_driver, write_script, body, *after, extra=()):
    _, args = driver_env.script_args(body, extra=["-o", driver_env.out, *extra], after=after)
    return run_driver(args, timeout=120)


def test_a_pytest_style_script_runs_under_pytest(driver_env, fake_vm, run_driver, write_script):
    # -s: pytest captures nothing, so the driver's log (and the guest's console) shows
    r = run(
        driver_env,
        fake_vm,
        run_driver,
        write_script,
        STYLE,
        "-s",
        extra=["--junit-xml", "junit.xml"],
    )
    assert r.returncode == 1, r  # test_fails fails
    out = r.stdout
    assert "1 failed, 6 passed" in out, out  # five tests and one subtest passed
    # pytest's rewritten assertion, and the machine's console under the failure
    assert "AssertionError: assert 41 == 42" in out and "where 41 = int('41\\n')" in out, out
    assert "last console lines of alpha" in out
    assert r.stderr.count("alpha # module-level-setup") == 1  # imported once
    # JUnit: pytest's, one case per test and per subtest (named after its test)
    root = ET.parse(driver_env.out / "junit.xml").getroot()
    cases = {c.get("name"): c.find("failure") is not None for c in root.iter("testcase")}
    classes = {c.get("name"): c.get("classname") for c in root.iter("testcase")}
    assert classes["inside"].endswith("test_fixtures"), classes
    assert cases == {
        "inside": False,
        "test_echo": False,
        "test_double[1]": False,
        "test_double[2]": False,
        "test_double[3]": False,
        "test_fails": True,
        "test_fixtures": False,
    }, cases


def test_arguments_after_the_script_go_to_pytest(driver_env, fake_vm, run_driver, write_script):
    r = run(driver_env, fake_vm, run_driver, write_script, STYLE, "-k", "double and not 3", "-v")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "test_double[1] PASSED" in r.stdout and "test_double[2] PASSED" in r.stdout
    assert "test_echo" not in r.stdout and "4 deselected" in r.stdout, r.stdout
    # --lf: after a failing run, only the failed test runs again
    r = run(driver_env, fake_vm, run_driver, write_script, STYLE, "-q")
    assert r.returncode == 1
    r = run(driver_env, fake_vm, run_driver, write_script, STYLE, "--lf", "-q")
    assert "1 failed" in r.stdout and "passed" not in r.stdout.split("1 failed")[1], r.stdout


def test_a_plugin_passed_with_p(driver_env, fake_vm, run_driver, write_script):
    plugdir = driver_env.tmp / "plugins"
    plugdir.mkdir()
    (plugdir / "answer_plugin.py").write_text(
        "import pytest\n\n@pytest.fixture\ndef answer():\n    return 42\n"
    )
    body = "def test_answer(answer, alpha):\n    assert answer == 42\n"
    vm = fake_vm("alpha")
    test = write_script("t.py", body)
    # the plugin's directory first; the package under test stays importable
    path = [str(plugdir), driver_env.env.get("PYTHONPATH", "")]
    env = {"PYTHONPATH": os.pathsep.join(p for p in path if p)}
    r = run_driver(["--vm-start-scripts", vm.script, "--", test, "-p", "answer_plugin"], env=env)
    assert r.returncode == 0, r
    assert "1 passed" in r.stdout


def test_unknown_machine_fixture_lists_the_machines(driver_env, fake_vm, run_driver, write_script):
    r = run(driver_env, fake_vm, run_driver, write_script, "def test_x(gamma):\n    pass\n")
    assert r.returncode == 1, r
    assert "no machine or fixture named 'gamma'; the machines are: alpha" in r.stdout


def test_legacy_scripts_are_unchanged_and_refuse_pytest_arguments(
    driver_env, fake_vm, run_driver, write_script
):
    legacy = "alpha.succeed('true')\nwith subtest('one'):\n    pass\n"
    r = run(driver_env, fake_vm, run_driver, write_script, legacy)
    assert r.returncode == 0, r
    assert "test session starts" not in r.stdout
    r = run(driver_env, fake_vm, run_driver, write_script, legacy, "-k", "x")
    assert r.returncode == 2, r
    assert "are for pytest, and this script is not pytest-style" in r.stderr


def test_plain_pytest_on_a_tests_folder(driver_env, fake_vm):
    vm = fake_vm("alpha")
    tests = driver_env.tmp / "suite"
    tests.mkdir()
    (tests / "test_machine.py").write_text(
        "def test_uname(alpha):\n    assert alpha.succeed('echo up') == 'up\\n'\n\n"
        "def test_fixtures(machines, driver):\n    assert [m.name for m in machines] == ['alpha']\n"
    )
    out = driver_env.tmp / "out"
    out.mkdir(exist_ok=True)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(tests),
            "--rootdir",
            str(tests),
            "--nixos-vm-start-script",
            str(vm.script),
            "--nixos-out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**driver_env.env, "PATH": os.environ["PATH"]},
        cwd=tests,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed" in r.stdout
    # --nixos-out: the HTML report is there, as the driver's with -o
    assert "test_uname" in (out / "report.html").read_text()


SUBTESTS = """
def test_steps(alpha, subtest):
    with subtest("works"):
        alpha.succeed("echo step-one-ran")
    with subtest("breaks"):
        alpha.succeed("echo about-to-break; exit 5")
    with subtest("never reached"):
        pass

def test_after(alpha):
    alpha.succeed("true")
"""


def test_junit_lists_each_subtest_with_its_status_and_console(
    driver_env, fake_vm, run_driver, write_script
):
    r = run(driver_env, fake_vm, run_driver, write_script, SUBTESTS, extra=["--junit-xml", "j.xml"])
    assert r.returncode == 1, r
    assert "2 failed, 2 passed" in r.stdout, r.stdout  # test_steps and its "breaks"
    root = ET.parse(driver_env.out / "j.xml").getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert set(cases) == {"works", "breaks", "test_steps", "test_after"}, set(cases)
    assert cases["works"].find("failure") is None
    assert cases["test_after"].find("failure") is None
    assert all(float(c.get("time")) >= 0 for c in cases.values())
    breaks = cases["breaks"].find("failure")
    assert breaks is not None and "exit code 5" in breaks.get("message"), ET.tostring(breaks)
    # the failure carries the machine's console: the fake guest echoes each command there
    assert "last console lines of alpha" in breaks.text, breaks.text
    whole = cases["test_steps"].find("failure")
    assert whole is not None and "last console lines of alpha" in whole.text


def test_the_module_name_ignores_a_nix_store_hash():
    from nixos_test_ng.pytest_style import _module_name

    store = "/nix/store/0c7kg8g4lqd8jm7iwq6cks6q7a9sv3ga-testScript"
    assert _module_name(store) == "testScript"
    assert _module_name(store.replace("testScript", "ports")) == "test_ports"
    assert _module_name("/x/my-test.py") == "test_my_test"
    assert _module_name("/x/test_ports.py") == "test_ports"
