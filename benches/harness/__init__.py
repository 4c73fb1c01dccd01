"""The benchmark harness behind `benches/run.py` (its command line and method: that file and
benches/README.md).

- `suites`: what a run measures: the suites, their scripts, machines and settings.
- `runner`: one `nixos-test-driver` run of a suite, isolated, its processes reaped.
- `figures`: a run's figures from its raw measurements; statistics over runs.
- `targets`: upstream's figures and the issue's targets.
- `environment`: the machine, the driver and the guest a result was taken with.
- `report`: the markdown table of a result.
- `main`: the command line, the rounds of runs, the result files.
- `watch`: the `watch` suite: the watch loop saved again and again; save → first command.
- `vmm`: the `vmm-*` suites: a VMM machine through its API stand-in; their figures.
"""

from pathlib import Path

BENCHES = Path(__file__).resolve().parent.parent
REPO = BENCHES.parent
SCRIPTS = BENCHES / "scripts"
RESULTS = BENCHES / "results"
