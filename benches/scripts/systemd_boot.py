# ruff: noqa: F821  (`machine` comes from the driver's namespace)
"""(i) The Debian systemd guest as a TCG VM: `start()` to the backdoor's first answer and to
multi-user.target. NTNG_BENCH_RESULT: the JSON file to write."""

import json
import os
import time

t_start = time.perf_counter()
machine.start()
machine.succeed("true")
first_command = time.perf_counter() - t_start
machine.wait_for_unit("multi-user.target")
multi_user = time.perf_counter() - t_start

with open(os.environ["NTNG_BENCH_RESULT"], "w") as f:
    json.dump({"first_command_s": first_command, "multi_user_s": multi_user}, f)
