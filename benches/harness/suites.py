"""The suites: each a separate `nixos-test-driver` run of a script in benches/scripts/."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.vmm import VMMS

#: The transport variable of our driver (issue 17): `backdoor` or `agent`.
TRANSPORT_VAR = "NIXOS_TEST_NG_TRANSPORT"


@dataclass(frozen=True)
class Suite:
    name: str
    script: str
    nodes: dict[str, list[int]]
    env: dict[str, str] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    #: upstream's driver runs it too when `--upstream` is given (same guest, same script)
    upstream: bool = False
    #: `firecracker` or `cloud-hypervisor`: the machine is that VMM's API stand-in with its
    #: fake runner (harness/vmm.py), not the busybox guest
    vmm: str | None = None
    #: run by the watch loop (harness/watch.py), saved this many times; not by the driver
    watch_saves: int = 0


def suites(calls: int, warmup: int, mb_iters: int) -> list[Suite]:
    commands_env = {
        "NTNG_BENCH_CALLS": str(calls),
        "NTNG_BENCH_WARMUP": str(warmup),
        "NTNG_BENCH_MB_ITERS": str(mb_iters),
    }
    return [
        Suite("minimal", "minimal.py", {"machine": []}, upstream=True),
        Suite("commands", "commands.py", {"machine": []}, commands_env, upstream=True),
        Suite(
            "tracing",
            "commands.py",
            {"machine": []},
            {**commands_env, "NTNG_BENCH_MB_ITERS": "0"},
            # the endpoint is the harness's receiver, set when it starts
        ),
        Suite(
            "stdout100", "stdout100.py", {"machine": []}, {"NTNG_BENCH_MB": "100"}, upstream=True
        ),
        Suite("start2", "start_all.py", {"node1": [], "node2": []}, upstream=True),
        Suite("start4", "start_all.py", {f"node{i}": [] for i in range(1, 5)}, upstream=True),
        Suite(
            "start2-vlan",
            "start_all.py",
            {"node1": [1], "node2": [1]},
            {"NTNG_BENCH_PING": "1"},
            upstream=True,
        ),
        Suite(
            "container",
            "container.py",
            {"machine": []},
            commands_env,
            {"machine": "systemd-nspawn"},
            upstream=True,
        ),
        Suite("systemd-vm", "systemd_boot.py", {"machine": []}, {}, {"machine": "systemd-vm"}),
        Suite("ocr", "ocr.py", {"machine": []}, {"NTNG_BENCH_OCR_ITERS": str(mb_iters)}),
        Suite("restore", "restore.py", {"machine": []}, {"NTNG_BENCH_RESTORE_ITERS": "5"}),
        Suite(
            "restore-systemd",
            "restore.py",
            {"machine": []},
            {"NTNG_BENCH_RESTORE_ITERS": "5"},
            {"machine": "systemd-vm"},
        ),
        Suite("watch", "watch.py", {"machine": []}, watch_saves=max(mb_iters, 3)),
        # agent vs backdoor (issue 17): our driver twice, the transport forced, adjacent in
        # every round so that drifts in the machine's load hit both
        *(
            Suite(
                f"transport-{transport}",
                "transport.py",
                {"machine": []},
                {
                    TRANSPORT_VAR: transport,
                    "NTNG_BENCH_CALLS": str(max(calls, 200)),
                    "NTNG_BENCH_WARMUP": str(warmup),
                    "NTNG_BENCH_MB_ITERS": str(mb_iters),
                    "NTNG_BENCH_COPY_MB": "10",
                    "NTNG_BENCH_BIG_MB": "100",
                },
            )
            for transport in TRANSPORTS
        ),
        # the driver's API calls through the VMM stand-ins, no guest (harness/vmm.py)
        *(
            Suite(
                f"vmm-{vmm}",
                "vmm.py",
                {"machine": []},
                {"NTNG_BENCH_VMM_ITERS": str(mb_iters)},
                vmm=vmm,
            )
            for vmm in VMMS
        ),
    ]


#: The transports the `transport-*` suites force, in the order they run in a round.
TRANSPORTS = ("backdoor", "agent")

#: Suites that need the Debian systemd guest (and root, for the container).
SYSTEMD_SUITES = {"container", "systemd-vm", "restore-systemd"}

#: Names `--only` accepts for a group of suites.
GROUPS = {
    "transport": [f"transport-{t}" for t in TRANSPORTS],
    "upstream": ["minimal", "commands", "stdout100", "container"],
    "vmm": [f"vmm-{vmm}" for vmm in VMMS],
}
