"""Network conditions and partitions on real guests: the busybox VM (TCG) and systemd-nspawn
containers. Conditions are `tc qdisc netem` in the guest; partitions are ingress `flower`
filters that drop by MAC address. Containers share the host's kernel: where it lacks the
modules, the test asserts the clear error instead (the host's support is probed first).
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap

import pytest
from test_report import Dom, render

pytestmark = pytest.mark.vm

THREE = {"a": [1], "b": [1], "c": [1]}

VM_SCRIPT = r"""
import re
import time

from nixos_test_ng import MachineError, NetworkConditionError

def rtts(machine, peer):
    out = machine.succeed(f"ping -c 3 -W 5 {peer}")
    m = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+) ms", out)
    t.assertIsNotNone(m, out)
    return float(m.group(1)), out

with subtest("invalid values raise before anything is sent"):
    # a command would boot the machine: it stays off
    for kwargs in (
        {"delay": "100 minutes"}, {"delay": -1}, {"loss": 1.5}, {"loss": "150%"},
        {"rate": "1 furlong"}, {"jitter": 0.01}, {}, {"vlan": 0, "delay": 0.1},
    ):
        try:
            c.set_network_conditions(**kwargs)
        except NetworkConditionError as e:
            t.assertIsInstance(e, ValueError)
            t.assertIn("invalid network condition", str(e))
            t.assertTrue(e.field, e)
        else:
            raise SystemExit(f"{kwargs} did not raise")
    try:
        driver.partition([[a, b]])
    except NetworkConditionError as e:
        t.assertEqual(e.field, "groups")
    else:
        raise SystemExit("a partition of one group did not raise")
    try:
        vlan1.partition([[a, b], [b, c]])
    except NetworkConditionError as e:
        t.assertIn("machine b is in more than one group", str(e))
    else:
        raise SystemExit("a machine in two groups did not raise")
    t.assertFalse(a.booted or b.booted or c.booted)

start_all()
for m in (a, b):
    m.wait_until_succeeds("ping -c 1 -W 1 c", timeout=60)
c.wait_until_succeeds("ping -c 1 -W 1 a", timeout=60)

with subtest("a VLAN the machine is not on"):
    try:
        a.set_network_conditions(vlan=2, delay=0.1)
    except MachineError as e:
        t.assertIn("no interface on VLAN 2", str(e))
        t.assertIn("52:54:00:12:02:01", str(e))
    else:
        raise SystemExit("VLAN 2 did not raise")

with subtest("delay"):
    base, _ = rtts(a, "b")
    a.set_network_conditions(delay="200ms")
    t.assertIn("netem", a.succeed("tc qdisc show"))
    slow, out = rtts(a, "b")
    t.assertTrue(190 <= slow <= 400, f"min rtt {slow} ms (without the delay {base} ms)\n{out}")
    a.clear_network_conditions(vlan=1)
    t.assertNotIn("netem", a.succeed("tc qdisc show"))

with subtest("loss"):
    a.set_network_conditions(loss=1.0)
    a.fail("ping -c 2 -W 1 b")
    a.clear_network_conditions()
    a.wait_until_succeeds("ping -c 1 -W 1 b", timeout=30)

with subtest("rate"):
    size = 512 * 1024  # 4.2 s at 1 mbit/s
    def transfer():
        # b (whose egress is limited) serves the bytes once; a fetches them
        b.succeed(f"(head -c {size} /dev/zero | nc -l -p 9000 -q 1 >/dev/null 2>&1 &)")
        started = time.monotonic()
        a.wait_until_succeeds(
            f"nc -d -w 30 b 9000 > /tmp/recv; [ $(stat -c %s /tmp/recv) -eq {size} ]",
            timeout=120,
        )
        return time.monotonic() - started
    b.set_network_conditions(rate="1mbit")
    limited = transfer()
    b.clear_network_conditions()
    # the rate bounds the throughput: 4 Mbit cannot pass in less than ~4 s
    t.assertGreaterEqual(limited, 3.0, f"{size} bytes at 1 mbit/s took {limited:.1f} s")

with subtest("partition and heal"):
    a.set_network_conditions(delay=0.05)
    driver.partition([[a, b], [c]], vlan=1)
    a.succeed("ping -c 1 -W 2 b")
    b.succeed("ping -c 1 -W 2 a")
    a.fail("ping -c 1 -W 2 c")
    c.fail("ping -c 1 -W 2 b")
    driver.heal()
    a.wait_until_succeeds("ping -c 1 -W 1 c", timeout=30)
    c.succeed("ping -c 1 -W 2 b")
    # healing removed only the partition's filters: the netem qdisc stays
    t.assertIn("netem", a.succeed("tc qdisc show"))
    a.clear_network_conditions()
    t.assertNotIn("clsact", a.succeed("tc qdisc show"))

with subtest("the vlan fixture's helpers, and a new partition replaces the old"):
    vlan1.partition([[a, b], [c]])
    vlan1.partition([[a], [b, c]])
    c.succeed("ping -c 1 -W 2 b")
    a.fail("ping -c 1 -W 2 b")
    vlan1.heal()
    a.wait_until_succeeds("ping -c 1 -W 1 b", timeout=30)
"""


def _report_spans(out) -> list[dict]:
    html = (out / "report.html").read_text()
    m = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', html, re.S)
    assert m, "no timeline data in the report"
    return json.loads(m.group(1))["spans"]


def test_conditions_and_partitions_on_vms(vm_env, tmp_path):
    r = vm_env.run(THREE, VM_SCRIPT, timeout=600)
    assert r.returncode == 0, r.stderr[-6000:]
    assert "setting network conditions on VLAN 1 (52:54:00:12:01:01, egress): delay 200ms" in (
        r.stderr
    )
    assert "partitioning VLAN 1: {a, b} | {c}" in r.stderr
    assert "healing the partition of every VLAN" in r.stderr
    network = [s for s in _report_spans(vm_env.out) if s["kind"] == "network"]
    names = {(s["machine"], s["name"]) for s in network}
    assert ("a", "VLAN 1: delay 200ms") in names, names
    assert ("b", "VLAN 1: rate 1mbit") in names, names
    assert (None, "VLAN 1 partitioned: {a, b} | {c}") in names, names
    assert all(s["status"] == "ok" and s["end"] > s["start"] for s in network), network
    # the page's script draws them as bands of a lane of their own
    dom = Dom(render(vm_env.out / "report.html", tmp_path)[0])
    assert "network" in dom.lanes, dom.lanes
    bands = {b["text"] for b in dom.bars if b["data-kind"] == "network"}
    assert {"a: VLAN 1: delay 200ms", "VLAN 1 partitioned: {a, b} | {c}"} <= bands, bands


def _host_kernel_has(*commands: str) -> bool:
    """Whether the host's kernel runs these `tc` commands on `lo` of a new network namespace."""
    script = "ip link set lo up && " + " && ".join(commands)
    r = subprocess.run(["unshare", "--net", "sh", "-c", script], capture_output=True)
    return r.returncode == 0


CONTAINER_SCRIPT = r"""
from nixos_test_ng import MachineError

start_all()
a.wait_until_succeeds("ping -c 1 -W 1 c", timeout=60)
b.wait_until_succeeds("ping -c 1 -W 1 c", timeout=60)

with subtest("conditions"):
    if NETEM:
        a.set_network_conditions(delay="200ms")
        out = a.succeed("ping -c 3 -W 5 b")
        low = float(out.rsplit("=", 1)[1].split("/")[0])
        t.assertTrue(190 <= low <= 400, out)
        a.clear_network_conditions()
        a.set_network_conditions(loss="100%")
        a.fail("ping -c 2 -W 1 b")
        a.clear_network_conditions()
        a.wait_until_succeeds("ping -c 1 -W 1 b", timeout=30)
    else:
        try:
            a.set_network_conditions(delay="200ms")
        except MachineError as e:
            t.assertIn("tc failed", str(e))
            t.assertIn("the kernel lacks a module", str(e))
            t.assertIn("uses the host's kernel", str(e))
        else:
            raise SystemExit("netem worked on a host kernel without it")

with subtest("partition"):
    if FLOWER:
        driver.partition([[a, b], [c]])
        a.succeed("ping -c 1 -W 2 b")
        a.fail("ping -c 1 -W 2 c")
        driver.heal()
        a.wait_until_succeeds("ping -c 1 -W 1 c", timeout=30)
    else:
        try:
            driver.partition([[a, b], [c]])
        except MachineError as e:
            t.assertIn("uses the host's kernel", str(e))
        else:
            raise SystemExit("a partition worked on a host kernel without flower")
        driver.heal()
        a.succeed("ping -c 1 -W 2 c")
"""


def test_conditions_and_partitions_on_containers(vm_env, systemd_guest):
    netem = _host_kernel_has("tc qdisc add dev lo root netem delay 1ms")
    flower = _host_kernel_has(
        "tc qdisc add dev lo clsact",
        "tc filter add dev lo ingress protocol all flower src_mac 52:54:00:12:01:01 action drop",
    )
    script = f"NETEM = {netem}\nFLOWER = {flower}\n" + textwrap.dedent(CONTAINER_SCRIPT)
    kinds = dict.fromkeys(THREE, "systemd-nspawn")
    r = vm_env.run(THREE, script, kinds=kinds, timeout=600)
    assert r.returncode == 0, r.stderr[-6000:]
    assert "setting network conditions on VLAN 1 (52:54:00:12:01:01, egress)" in r.stderr
    assert "partitioning VLAN 1: {a, b} | {c}" in r.stderr


PYTEST_STYLE = r"""
start_all()
a.wait_until_succeeds("ping -c 1 -W 1 b", timeout=60)


def test_the_vlan_fixture_partitions_and_heals(a, b, vlan1):
    vlan1.partition([[a], [b]])
    try:
        a.fail("ping -c 1 -W 2 b")
        b.fail("ping -c 1 -W 2 a")
    finally:
        vlan1.heal()
    a.wait_until_succeeds("ping -c 1 -W 1 b", timeout=30)


def test_a_restore_clears_conditions_only_when_the_snapshot_predates_them(a, b, driver):
    driver.snapshot_all("clean")
    a.set_network_conditions(loss=1.0)
    a.fail("ping -c 2 -W 1 b")
    driver.snapshot_all("lossy")
    driver.restore_all("clean")  # taken before the conditions: they are gone
    assert "netem" not in a.succeed("tc qdisc show")
    a.wait_until_succeeds("ping -c 1 -W 1 b", timeout=30)
    driver.restore_all("lossy")  # taken while they were set: they are back
    assert "netem" in a.succeed("tc qdisc show")
    a.fail("ping -c 2 -W 1 b")
    a.clear_network_conditions()
    a.wait_until_succeeds("ping -c 1 -W 1 b", timeout=30)
"""


def test_pytest_style_vlan_fixture_and_snapshots(vm_env, takes_snapshots):
    r = vm_env.run({"a": [1], "b": [1]}, PYTEST_STYLE, timeout=600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-4000:]
    assert "2 passed" in r.stdout, r.stdout[-4000:]
