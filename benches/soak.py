#!/usr/bin/env python3
"""Soak harness of nixos-test-ng: long runs without leaks (issue 21, item 3; docs/soak.md).

    python3 benches/soak.py [--runs N] [--commands N] [--vms N] [--only STAGES] [--quick]
                            [--kind vm|container] [--name NAME]

Stages: (runs) N runs back to back of a small test, a fresh `nixos-test-ng run` each time,
with `--reuse-boots`; (commands) N `succeed("true")` in one run, the driver's RSS sampled;
(start) N busybox VMs started together. Per stage: the harness's open fds, our processes,
temporary entries and mounts before and after (what leaked), the driver's RSS, latency
percentiles. Writes benches/results/soak-NAME.json and .md; exits 1 when a target is not met.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.soak import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
