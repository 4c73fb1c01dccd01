"""The boot cache (`--reuse-boots`, docs/boot-cache.md) on real TCG VMs: a second run of an
unchanged test starts its VMs from the cache; a changed input, a damaged entry, a full disk
and two runs at once each behave as documented."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from nixos_test_ng import procs

# The cache saves VMs: a run with it on starts them without the vhost-user vsock device by
# itself (no NIXOS_TEST_NG_SNAPSHOTS here), so the transport is the backdoor.
pytestmark = [pytest.mark.vm, pytest.mark.one_transport]

HIT = "started from the boot cache (key "
SAVED = "saved in the boot cache (key "
IMAGE_MADE = "memory image of the boot cache entry made"
MAPPED = "; memory mapped from its image)"

# The guest's clock against the host's, the shares, and a random number.
PROBE = r"""
import time
start_all()
for m in machines:
    before = time.time()
    guest = float(m.succeed("bash -c 'echo $EPOCHREALTIME'"))
    after = time.time()
    print(f"CLOCK {m.name} {before} {guest} {after}", flush=True)
    m.succeed("grep -q ' /tmp/shared 9p ' /proc/mounts && grep -q ' /tmp/xchg 9p ' /proc/mounts")
    print(f"UUID {m.name} {m.succeed('cat /proc/sys/kernel/random/uuid').strip()}", flush=True)
    forks = m.succeed("dmesg | grep -c 'crng reseeded due to virtual machine fork' || true")
    print(f"RESEEDED {m.name} {forks.strip()}", flush=True)
    # the refresh after a cached start went through the guest's refresh server
    print(f"SERVED {m.name} {m.succeed('cat /run/nixos-test-ng/refresh/served').strip()}", flush=True)
    # written after the state was saved: never in a later run
    m.fail("test -e /etc/ntng-written-after-boot")
    m.succeed("echo x > /etc/ntng-written-after-boot")
"""


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("NIXOS_TEST_NG_BOOT_CACHE", str(d))
    return d


def log_of(r) -> str:
    return r.stdout + r.stderr


def ok(r) -> str:
    log = log_of(r)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return log


def lines(log: str, tag: str) -> dict[str, list[str]]:
    return {
        line.split()[1]: line.split()[2:] for line in log.splitlines() if line.startswith(tag + " ")
    }


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if (p / "manifest.json").exists())


def no_leftovers(cache: Path) -> None:
    names = [p.name for p in cache.iterdir()] if cache.exists() else []
    assert not [n for n in names if n.startswith(".tmp-")], names


def test_a_second_run_starts_from_the_cache(vm_env, cache, leftovers):
    first = ok(vm_env.run({"machine": []}, PROBE))
    assert "machine: " + SAVED in first, first[-4000:]
    assert HIT not in first
    [entry] = entries(cache)
    time.sleep(3)  # the saved guest clock is now 3 s behind
    second = ok(vm_env.run({"machine": []}, PROBE))
    assert "machine: " + HIT + entry.name[:12] in second, second[-4000:]
    assert SAVED not in second
    assert lines(first, "RESEEDED")["machine"] == ["0"]
    assert lines(second, "RESEEDED")["machine"] == ["1"], second[-3000:]
    assert lines(first, "SERVED")["machine"] == ["0"]
    assert lines(second, "SERVED")["machine"] == ["1"], second[-3000:]
    before, guest, after = map(float, lines(second, "CLOCK")["machine"])
    assert before - 1 <= guest <= after + 1, (before, guest, after)
    # the first start from the entry loaded its snapshot and made its memory image
    assert "machine: " + IMAGE_MADE in second and MAPPED not in second, second[-4000:]
    assert sorted(p.name for p in (entry / "memory").iterdir()) == ["ram", "stamp.json", "state"]
    third = ok(vm_env.run({"machine": []}, PROBE))
    # the next ones map it
    assert HIT in third and MAPPED in third and IMAGE_MADE not in third, third[-4000:]
    assert lines(third, "RESEEDED")["machine"] == ["1"], third[-3000:]
    assert lines(third, "SERVED")["machine"] == ["1"], third[-3000:]
    before, guest, after = map(float, lines(third, "CLOCK")["machine"])
    assert before - 1 <= guest <= after + 1, (before, guest, after)
    # the kernel reseeded its generator (the VM generation ID changed): the two starts from one
    # state draw different numbers
    assert lines(second, "UUID")["machine"] != lines(third, "UUID")["machine"]
    # a memory image cut short is not mapped: the snapshot is loaded and the image made again
    ram = entry / "memory" / "ram"
    with open(ram, "r+b") as f:
        f.truncate(ram.stat().st_size // 2)
    fourth = ok(vm_env.run({"machine": []}, PROBE))
    assert "its memory image changed since it was made" in fourth, fourth[-4000:]
    assert HIT in fourth and MAPPED not in fourth and IMAGE_MADE in fourth
    assert lines(second, "UUID")["machine"] != lines(fourth, "UUID")["machine"]
    fifth = ok(vm_env.run({"machine": []}, PROBE))
    assert MAPPED in fifth, fifth[-4000:]
    no_leftovers(cache)
    assert not leftovers(vm_env.root)


def test_the_flag_turns_it_on(vm_env, tmp_path, monkeypatch):
    monkeypatch.delenv("NIXOS_TEST_NG_BOOT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    off = ok(vm_env.run({"machine": []}, "start_all(); machine.succeed('true')"))
    assert SAVED not in off and HIT not in off
    on = ok(vm_env.run({"machine": []}, "start_all(); machine.succeed('true')", "--reuse-boots"))
    assert SAVED in on, on[-3000:]
    assert entries(tmp_path / "xdg-cache" / "nixos-test-ng" / "boots")


def test_a_changed_input_boots_and_list_and_clear(vm_env, cache, monkeypatch):
    script = "start_all(); print('PARAMS', machine.succeed('cat /proc/cmdline'))"
    ok(vm_env.run({"machine": []}, script))
    monkeypatch.setenv("QEMU_KERNEL_PARAMS", "ntng.changed=1")
    changed = ok(vm_env.run({"machine": []}, script))
    assert HIT not in changed, changed[-3000:]
    assert SAVED in changed
    assert "ntng.changed=1" in changed  # a real boot with the new parameter
    again = ok(vm_env.run({"machine": []}, script))
    assert HIT in again and "ntng.changed=1" in again
    assert len(entries(cache)) == 2

    env = vm_env.environ()
    listed = subprocess.run(
        ["nixos-test-ng", "cache", "list", "--inputs"], env=env, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    assert f"{cache}: 2 entries" in listed.stdout, listed.stdout
    for e in entries(cache):
        assert f"{e.name[:12]}  machine " in listed.stdout, listed.stdout
    assert "env QEMU_KERNEL_PARAMS=ntng.changed=1" in listed.stdout
    cleared = subprocess.run(
        ["nixos-test-ng", "cache", "clear"], env=env, capture_output=True, text=True
    )
    assert cleared.returncode == 0, cleared.stderr
    assert cleared.stdout == f"deleted 2 boot cache entries in {cache}\n"
    assert entries(cache) == []
    bad = subprocess.run(
        ["nixos-test-ng", "cache", "list"],
        env={**env, "NIXOS_TEST_NG_BOOT_CACHE_SIZE": "huge"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and 'NIXOS_TEST_NG_BOOT_CACHE_SIZE="huge" is not a size' in (
        bad.stdout
    )


@pytest.mark.parametrize("damage", ["corrupted", "truncated"])
def test_a_damaged_entry_is_discarded(vm_env, cache, damage):
    script = "start_all(); machine.succeed('true')"
    ok(vm_env.run({"machine": []}, script))
    [entry] = entries(cache)
    [disk] = [p for p in (entry / "disk").rglob("*") if p.is_file()]
    size = disk.stat().st_size
    with open(disk, "r+b") as f:
        if damage == "corrupted":
            f.seek(size // 2)
            byte = f.read(1)
            f.seek(size // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
        else:
            f.truncate(size // 2)
    log = ok(vm_env.run({"machine": []}, script))
    why = (
        "checksum" if damage == "corrupted" else f"has {size // 2} bytes, its manifest says {size}"
    )
    assert f"boot cache entry {entry.name[:12]} discarded: " in log, log[-4000:]
    assert why in log, log[-4000:]
    assert HIT not in log
    assert SAVED in log  # booted normally, and saved again
    [again] = entries(cache)
    assert (again / "disk").exists()
    no_leftovers(cache)


def spawn_in(vm_env, name: str, nodes, script: str) -> subprocess.Popen:
    """The driver in a tmp dir of its own (`name`), as a second user would run it."""
    root = vm_env.root / name
    (root / "xdg").mkdir(parents=True)
    test = root / "test.py"
    test.write_text(script)
    scripts = vm_env.scripts(nodes)
    args = ["nixos-test-driver", "-o", str(root), *procs.driver_arguments(scripts, {}, [])]
    env = {**vm_env.environ(), "XDG_RUNTIME_DIR": str(root / "xdg")}
    return subprocess.Popen(
        [*args, "--", str(test)],
        env=env,
        cwd=root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def both(vm_env, tag: str) -> list[str]:
    script = "start_all(); machine.succeed('echo ok')"
    runs = [spawn_in(vm_env, f"{tag}-{i}", {"machine": []}, script) for i in range(2)]
    logs = []
    for p in runs:
        try:
            out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            procs.kill_group(p.pid)
            out, err = p.communicate()
        assert p.returncode == 0, out[-2000:] + err[-4000:]
        logs.append(out + err)
    return logs


def test_two_runs_at_once(vm_env, cache, leftovers):
    saving = both(vm_env, "save")
    # both booted and saved; the second rename found the first entry and kept it
    assert all(SAVED in log or "another run saved key" in log for log in saving), saving
    [entry] = entries(cache)
    no_leftovers(cache)
    loading = both(vm_env, "load")
    assert all(HIT + entry.name[:12] in log for log in loading), [x[-3000:] for x in loading]
    assert entries(cache) == [entry]
    assert not leftovers(vm_env.root)


def test_a_full_disk_while_saving(vm_env, tmp_path, monkeypatch):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)], check=True)
    try:
        monkeypatch.setenv("NIXOS_TEST_NG_BOOT_CACHE", str(small))
        script = "start_all(); machine.succeed('echo ok')"
        log = ok(vm_env.run({"machine": []}, script))
        assert "machine: not saved in the boot cache: copying its disks into" in log, log[-3000:]
        assert "No space left on device" in log
        assert SAVED not in log
        assert [p.name for p in small.iterdir()] == []  # nothing half-written
        again = ok(vm_env.run({"machine": []}, script))
        assert HIT not in again
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_two_vms_on_a_vlan_reach_each_other_after_a_cached_start(vm_env, cache):
    nodes = {"client": [1], "server": [1]}
    script = r"""
start_all()
for a, b in [(client, server), (server, client)]:
    out = a.succeed(f"ping -c 3 -i 0.2 -W 10 {b.name} 2>&1")
    t.assertTrue("3 packets received" in out and "DUP!" not in out, out)
"""
    first = ok(vm_env.run(nodes, script))
    assert first.count(SAVED) == 2, first[-4000:]
    second = ok(vm_env.run(nodes, script))
    assert "client: " + HIT in second and "server: " + HIT in second, second[-4000:]
    assert len(entries(cache)) == 2  # their keys differ (node number, MACs)


def test_a_vm_that_cannot_be_saved_says_why(vm_env, cache):
    scripts = vm_env.scripts({"machine": []})
    path = Path(scripts["machine"])
    text = path.read_text()
    no_disk = [line for line in text.splitlines() if "id=ntng-snapshots" not in line]
    assert len(no_disk) == len(text.splitlines()) - 1
    path.write_text("\n".join(no_disk) + "\n")
    log = ok(vm_env.run({"machine": []}, "start_all(); machine.succeed('true')", keep_scripts=True))
    assert "machine: not saved in the boot cache: QEMU refused: " in log, log[-3000:]
    assert "to make it cacheable: the VM needs a writable qcow2 disk" in log
    assert not entries(cache) if cache.exists() else True


def test_the_systemd_vm_through_nixos_test_ng_run(vm_env, cache, systemd_guest, tmp_path):
    test = tmp_path / "systemd.py"
    test.write_text(
        "import time\n"
        "x.wait_for_unit('multi-user.target')\n"
        "before = time.time()\n"
        "guest = float(x.succeed('date +%s.%N'))\n"
        "print('CLOCK x', before, guest, time.time(), flush=True)\n"
        "print('SERVED x', x.succeed('cat /run/nixos-test-ng/refresh/served').strip(), flush=True)\n"
        # no vsock device (a VM the cache may save has none): the agent stays down, no restarts
        "state = x.execute('systemctl is-active nixos-test-ng-agent')[1].strip()\n"
        "restarts = x.succeed('systemctl show -p NRestarts --value nixos-test-ng-agent').strip()\n"
        "print('AGENT x', state, restarts, flush=True)\n"
    )
    env = vm_env.environ()
    (tmp_path / "xdg").mkdir(exist_ok=True)

    def run():
        return subprocess.run(
            ["nixos-test-ng", "run", str(test), "-m", "x@systemd", "--", "--reuse-boots"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )

    first = ok(run())
    assert "x: " + SAVED in first, first[-4000:]
    assert lines(first, "AGENT")["x"] == ["inactive", "0"], first[-4000:]
    assert "no virtio vsock device and no ntng.agent=tcp: not started" in first
    time.sleep(3)
    second = ok(run())
    assert "x: " + HIT in second, second[-4000:]
    before, guest, after = map(float, lines(second, "CLOCK")["x"])
    assert before - 1 <= guest <= after + 1, (before, guest, after)
    assert "x: " + IMAGE_MADE in second, second[-4000:]
    assert lines(second, "SERVED")["x"] == ["1"], second[-3000:]
    third = ok(run())
    assert "x: " + HIT in third and MAPPED in third, third[-4000:]
    assert lines(third, "SERVED")["x"] == ["1"], third[-3000:]
    before, guest, after = map(float, lines(third, "CLOCK")["x"])
    assert before - 1 <= guest <= after + 1, (before, guest, after)
    assert os.listdir(cache)
