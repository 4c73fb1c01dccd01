#!/usr/bin/env python3
"""Benchmark harness of nixos-test-ng: the busybox guest under TCG, driven by `nixos-test-driver`.

    python3 benches/run.py [--runs N] [--quick] [--driver PATH] [--only SUITE,...] [--name NAME]

Measures (see benches/README.md for the method of each):
  (a) driver start -> first QEMU exec        (b) boot -> handshake, the driver's own log line
  (c) succeed("true") round trip             (d) 1 MB of stdout, and the same to /dev/null
  (e) start_all() of 2 and 4 VMs, and of 2 VMs on one VLAN, until each answered a command
  (f) the driver's peak RSS                  (g) the driver's own share of a minimal run
  (j) OCR of a known screen: every variant vs `wait_for_text`'s early exit
  (h) a systemd-nspawn container of the Debian systemd guest: start to first command and to
      multi-user.target, succeed("true"), 1 MB      (i) the systemd guest as a VM: boot
  (l) succeed("true") with spans exported over OTLP to a receiver in this process, against
      (c) in the same round: the cost of tracing
  (n) a Firecracker and a Cloud Hypervisor machine through the API stand-ins (fake runner, no
      guest): the driver's share of a boot, a snapshot and a restore, and their API calls
  (o) the watch loop (`nixos-test-ng run --watch`): a save of the script -> the new run's
      first command returned
and writes benches/results/NAME.json and NAME.md (NAME: `latest`, or `quick` with --quick).

Every driver run gets its own temporary directory (XDG_RUNTIME_DIR, output directory, start
scripts) and its own session; whatever is left of a run is killed after it, and everything
is killed when the harness exits. Runs are strictly sequential.

The harness itself is the package benches/harness/ (its modules: harness/__init__.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
