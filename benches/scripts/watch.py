# ruff: noqa: F821  (`machine` comes from the driver's namespace)
"""(o) The watch loop: run by `python -m nixos_test_ng.watch` (the loop of `nixos-test-ng run
--watch`) with one VM called `machine`, and saved again and again by the harness
(harness/watch.py). Each run appends the time its first command returned (CLOCK_REALTIME) to
$NTNG_BENCH_WATCH_STAMPS; that first command also checks that the machine was restored (the
dirt of the previous run is gone), so a run on a machine not restored gives no stamp."""

import os
import time

machine.succeed("test ! -e /root/dirt")
t_first = time.time()
with open(os.environ["NTNG_BENCH_WATCH_STAMPS"], "a") as f:
    f.write(f"{t_first}\n")
machine.succeed("echo dirt > /root/dirt")
# saved by the harness: this line changes with every save
