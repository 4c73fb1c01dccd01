"""The suites: each a separate `nixos-test-driver` run of a script in benches/scripts/."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Suite:
    name: str
    script: str
    nodes: dict[str, list[int]]
    env: dict[str, str] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)


def suites(calls: int, warmup: int, mb_iters: int) -> list[Suite]:
    return [
        Suite("minimal", "minimal.py", {"machine": []}),
        Suite(
            "commands",
            "commands.py",
            {"machine": []},
            {
                "NTNG_BENCH_CALLS": str(calls),
                "NTNG_BENCH_WARMUP": str(warmup),
                "NTNG_BENCH_MB_ITERS": str(mb_iters),
            },
        ),
        Suite(
            "tracing",
            "commands.py",
            {"machine": []},
            {
                "NTNG_BENCH_CALLS": str(calls),
                "NTNG_BENCH_WARMUP": str(warmup),
                "NTNG_BENCH_MB_ITERS": "0",
                # the endpoint is the harness's receiver, set when it starts
            },
        ),
        Suite("start2", "start_all.py", {"node1": [], "node2": []}),
        Suite("start4", "start_all.py", {f"node{i}": [] for i in range(1, 5)}),
        Suite(
            "start2-vlan", "start_all.py", {"node1": [1], "node2": [1]}, {"NTNG_BENCH_PING": "1"}
        ),
        Suite(
            "container",
            "container.py",
            {"machine": []},
            {
                "NTNG_BENCH_CALLS": str(calls),
                "NTNG_BENCH_WARMUP": str(warmup),
                "NTNG_BENCH_MB_ITERS": str(mb_iters),
            },
            {"machine": "systemd-nspawn"},
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
    ]


#: Suites that need the Debian systemd guest (and root, for the container).
SYSTEMD_SUITES = {"container", "systemd-vm", "restore-systemd"}
