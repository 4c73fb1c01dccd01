"""`run-<node>-nspawn`: start the systemd guest's tree as a systemd-nspawn container, following
upstream's container start-script contract (nixpkgs' test driver, `NspawnMachine`):

- the driver runs the script as root with the environment *replaced* by only
  `RUN_NSPAWN_ROOT_DIR` (the machine's state directory) and `RUN_NSPAWN_SHARED_DIR` (the shared
  directory), so the script sets PATH itself;
- it prints `systemd-nspawn's PID is <pid>` on stdout just before nspawn starts, and that pid
  is systemd-nspawn's (the script execs it: the driver finds the container's init as the single
  child of that pid, and kills the script's process group to stop it);
- nspawn's stdout is the container's console (`--console=read-only`: a pseudo TTY whose output
  nspawn copies to stdout; journald forwards the journal there);
- the journal is also on the host, in `$RUN_NSPAWN_ROOT_DIR/var/log/journal` (bound into the
  container), the shared directory is `/tmp/shared`.

VLANs: the container has a network namespace of its own (made by the script, which nspawn then
shares), and joins VLAN `v` as its `eth<i>` (the i-th VLAN of the node, as a VM's NICs) through a
tap device that `vde_plug2tap` creates right there and plugs into the VLAN's switch, at
`$QEMU_VDE_SOCKET_<v>` (nixos-test-ng's driver passes these, beyond upstream's two variables).
The tap gets the MAC and address a VM's NIC would (52:54:00:12:<v>:<n>, 192.168.<v>.<n>/24), and
`/etc/hosts` lists every node. Nothing is created in the host's network namespace, so two test
runs on one host cannot collide. (Upstream's scripts use a host bridge `br<v>` and veth pairs
instead, fed by the driver's `vde-tap<v>`; the driver creates that tap as upstream does.)

What this host needs (docs/guests.md, "The systemd guest"): a private mount namespace
(`unshare --mount --net --propagation private`) in which /run (or /run/systemd/nspawn) is a fresh
tmpfs and /sys/fs/cgroup is the unified (v2) hierarchy, so nothing is mounted on the host;
a cgroup of the container's own under the script's, so that containers do not share one; and a
watcher in its own session that kills the container's cgroup and removes it once nspawn is
gone (systemd-nspawn killed with SIGKILL leaves the container running otherwise).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

__all__ = ["render_nspawn_script"]

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Runs in its own session (not in the script's process group, so the driver's kill does not
# reach it) and in the script's cgroup's parent: waits for systemd-nspawn ($2) to exit, then
# kills whatever is left in the container's cgroup ($1) and removes the cgroup tree.
WATCHER = r"""
cg=$1 main=$2
exec {tick}<> <(:)  # `read -t` on a pipe nobody writes to: a sleep without a fork
alive() {  # not gone, not a zombie
    local stat
    read -r stat 2>/dev/null <"/proc/$main/stat" || return 1
    stat=${stat##*) }
    [ "${stat:0:1}" != Z ] && [ "${stat:0:1}" != X ]
}
while alive; do read -r -t 0.05 -u "$tick" _ || :; done
for _ in $(seq 100); do
    grep -qx 'populated 0' "$cg/cgroup.events" 2>/dev/null && break
    if [ -e "$cg/cgroup.kill" ]; then
        echo 1 >"$cg/cgroup.kill"
    else
        find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null
    fi
    sleep 0.05
done
find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
exit 0
""".strip()


class _Node(Protocol):
    name: str
    number: int
    vlans: tuple[int, ...]

    def mac(self, vlan: int) -> str: ...

    def address(self, vlan: int) -> str: ...


def _network_lines(node: _Node, hosts: Sequence[tuple[str, str]]) -> list[str]:
    """The script's part that fills the container's network namespace: lo, one tap per VLAN
    (plugged into the VLAN's switch by a `vde_plug2tap` in a cgroup under the container's, so
    the watcher ends it with the container), and the /etc/hosts file the container gets."""
    me = f"run-{node.name}-nspawn"
    nl = "$'\\n'"
    plug = 'echo $$ >"$1/cgroup.procs" && exec vde_plug2tap -s "$2" "$3"'
    lines = [
        "# the container's network: lo, and one tap per VLAN plugged into the VLAN's switch. The",
        "# plugs run in a cgroup under the container's (the watcher ends them) and in their own",
        "# session (not children of this PID, whose only child is to be nspawn's)",
        'mkdir -p "$cg/net"',
        f'batch="link set lo up"{nl}',
    ]
    for i, vlan in enumerate(node.vlans, start=1):
        var = f"QEMU_VDE_SOCKET_{vlan}"
        lines += [
            f'sock="${{{var}:-}}"',
            'if [ -z "$sock" ] || [ ! -S "$sock/ctl" ]; then',
            f'    echo "{me}: VLAN {vlan}: no switch at \\${var} (\\"$sock\\"); the test driver'
            ' starts one per VLAN" >&2',
            "    exit 1",
            "fi",
            f'setsid --fork "$BASH" -c {shlex.quote(plug)} ntng-plug "$cg/net" "$sock" eth{i}'
            " </dev/null >/dev/null 2>&1",
            f'batch+="link set eth{i} address {node.mac(vlan)}"{nl}',
            f'batch+="address add {node.address(vlan)}/24 dev eth{i}"{nl}',
            f'batch+="link set eth{i} up"{nl}',
        ]
    if node.vlans:
        lines += [
            "# the plugs create their taps within milliseconds",
            f"for i in $(seq {len(node.vlans)}); do",
            "    for _ in $(seq 500); do",
            '        ip link show dev "eth$i" >/dev/null 2>&1 && continue 2',
            "        sleep 0.01",
            "    done",
            f'    echo "{me}: vde_plug2tap did not create eth$i" >&2',
            "    exit 1",
            "done",
        ]
    entries = ["127.0.0.1 localhost", "::1 localhost", *(f"{ip} {name}" for ip, name in hosts)]
    lines += [
        'printf %s "$batch" | ip -batch -',
        f"printf '%s\\n' {' '.join(shlex.quote(e) for e in entries)} >\"$root_dir/hosts\"",
    ]
    return lines


def render_nspawn_script(
    node: _Node,
    *,
    rootfs: Path,
    rootfs_lock: Path,
    uuid: str,
    hosts: Sequence[tuple[str, str]] = (),
    path: str = PATH,
) -> str:
    """The text of `run-<node>-nspawn`: the container `node` on the tree `rootfs` (read-only,
    under a tmpfs overlay), holding `rootfs_lock` shared while it runs, with machine ID
    `uuid`, on the VLANs of `node`. `hosts` are the (address, name) pairs that /etc/hosts
    lists besides localhost. `path` is the PATH the script sets (its environment has none)."""
    name = node.name
    me = f"run-{name}-nspawn"
    vlans = ", ".join(map(str, node.vlans)) or "none"
    lines = [
        "#!/bin/bash",
        f"# {me}: start the nixos-test-ng systemd guest as container `{name}` (node number",
        f"# {node.number}; VLANs: {vlans}). Written by `nixos-test-ng guest scripts`; follows the",
        "# run-<name>-nspawn contract: run as root with only RUN_NSPAWN_ROOT_DIR (the machine's",
        "# state directory) and RUN_NSPAWN_SHARED_DIR in the environment; prints",
        "# `systemd-nspawn's PID is N` and then execs systemd-nspawn as that PID; its stdout is",
        "# the container's console. The tree is never modified (--volatile=overlay).",
        "set -eu",
        f"export PATH={shlex.quote(path)}",
        "export LC_ALL=C",
        f"name={shlex.quote(name)}",
        f"rootfs={shlex.quote(str(rootfs))}",
        f"rootfs_lock={shlex.quote(str(rootfs_lock))}",
        f"uuid={uuid}",
        f'root_dir="${{RUN_NSPAWN_ROOT_DIR:?{me}: RUN_NSPAWN_ROOT_DIR is not set}}"',
        f'shared_dir="${{RUN_NSPAWN_SHARED_DIR:?{me}: RUN_NSPAWN_SHARED_DIR is not set}}"',
        "",
        'if [ -z "${_NTNG_NSPAWN_INNER:-}" ]; then',
        '    if [ "$(id -u)" != 0 ]; then',
        f'        echo "{me}: systemd-nspawn needs root" >&2',
        "        exit 1",
        "    fi",
        '    if [ ! -e "$rootfs/usr/lib/os-release" ]; then',
        f'        echo "{me}: no systemd guest in $rootfs (run \\`nixos-test-ng guest build'
        ' --systemd\\`)" >&2',
        "        exit 1",
        "    fi",
        '    mkdir -p "$root_dir/var/log/journal" "$shared_dir"',
        "    # everything mounted from here on lives in this private mount namespace only, and the",
        "    # container's network namespace is this new one (the PID stays the same through the",
        "    # execs that follow)",
        "    _NTNG_NSPAWN_INNER=1 exec unshare --mount --net --propagation private -- \\",
        '        "$BASH" "$0" "$@"',
        "fi",
        "unset _NTNG_NSPAWN_INNER",
        "",
        "# nspawn keeps runtime files under /run/systemd/nspawn: on a fresh tmpfs here",
        'if [ "$(stat -f -c %T /run)" = tmpfs ]; then',
        "    mkdir -p /run/systemd/nspawn",
        "    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run/systemd/nspawn",
        "else",
        "    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run",
        "fi",
        "# the unified cgroup hierarchy at /sys/fs/cgroup (hybrid and legacy hosts have a tmpfs",
        "# there): a bind mount of the existing cgroup2 mount, which leaves its options alone",
        'if [ "$(stat -f -c %T /sys/fs/cgroup)" != cgroup2fs ]; then',
        "    v2=$(awk '$3 == \"cgroup2\" { print $2; exit }' /proc/self/mounts)",
        '    if [ -n "$v2" ]; then',
        '        mount --bind "$v2" /sys/fs/cgroup',
        "    else",
        "        mount -t cgroup2 cgroup2 /sys/fs/cgroup",
        "    fi",
        "fi",
        "# a cgroup of the container's own (nspawn --keep-unit puts its payload and supervisor",
        "# cgroups under the caller's); first remove those of containers whose nspawn is gone",
        "own=$(sed -n 's/^0:://p' /proc/self/cgroup)",
        'parent="/sys/fs/cgroup${own%/}"',
        'for old in "$parent"/ntng-*.*; do',
        '    [ -d "$old" ] || continue',
        '    kill -0 "${old##*.}" 2>/dev/null && continue',
        '    [ -e "$old/cgroup.kill" ] && echo 1 >"$old/cgroup.kill" 2>/dev/null',
        '    find "$old" -depth -type d -exec rmdir {} + 2>/dev/null || true',
        "done",
        'cg="$parent/ntng-$name.$$"',
        'mkdir -p "$cg"',
        "",
        "# the rebuild of the tree waits while it is in use",
        'exec 9>>"$rootfs_lock"',
        "flock --shared --wait 120 9",
        "",
        "# the watcher: kills and removes the container's cgroup once nspawn is gone, however",
        "# it ends (the driver's SIGKILL, its death through PR_SET_PDEATHSIG, a poweroff)",
        f"watcher={shlex.quote(WATCHER)}",
        'setsid --fork "$BASH" -c "$watcher" ntng-watch "$cg" "$$" </dev/null >/dev/null 2>&1',
        'echo $$ >"$cg/cgroup.procs"',
        "",
        *_network_lines(node, hosts),
        "",
        "# nspawn's --bind syntax: `:` separates, `\\` escapes",
        'esc() { local s="${1//\\\\/\\\\\\\\}"; printf %s "${s//:/\\\\:}"; }',
        'journal_bind="$(esc "$root_dir/var/log/journal"):/var/log/journal"',
        'shared_bind="$(esc "$shared_dir"):/tmp/shared"',
        'hosts_bind="$(esc "$root_dir/hosts"):/etc/hosts"',
        "export SYSTEMD_NSPAWN_LOCK=0  # no lock files beside the tree (rootfs.lock does that)",
        "# Announced last, so that the only children of this PID from now on are nspawn's: the",
        "# driver takes the container's init to be its single child (a driver should still",
        "# check that the child has a PID namespace of its own: nspawn's short-lived outer",
        "# child has not; and systemd's bus is up only some 0.1 s after that)",
        'echo "systemd-nspawn\'s PID is $$"',
        "exec systemd-nspawn \\",
        '    --directory="$rootfs" --volatile=overlay \\',
        '    --machine="$name" --uuid="$uuid" \\',
        "    --register=no --keep-unit \\",
        "    --network-namespace-path=/proc/$$/ns/net \\",
        "    --console=read-only \\",
        '    --bind="$journal_bind" --bind="$shared_bind" --bind-ro="$hosts_bind" \\',
        "    --boot",
    ]
    return "\n".join(lines) + "\n"
