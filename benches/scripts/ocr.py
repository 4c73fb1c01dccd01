# ruff: noqa: F821  (`machine` comes from the driver's namespace)
"""(j) OCR of a known screen: all three variants (upstream waits for every one on each try)
against `wait_for_text`, which stops at the first variant that matches. NTNG_BENCH_OCR_ITERS
repetitions of each, alternating; NTNG_BENCH_RESULT: the JSON file to write."""

import json
import os
import time

iters = int(os.environ.get("NTNG_BENCH_OCR_ITERS", "5"))
machine.start()
machine.wait_until_succeeds("test -e /dev/fb0", timeout=60)
machine.succeed("printf '\\033[2J\\033[H' > /dev/tty1; echo 'HELLO OCR WORLD 4242' > /dev/tty1")
machine.get_screen_text()  # warm-up: tesseract's model into the page cache

all_variants_s, early_exit_s, raw_s = [], [], []
for _ in range(iters):
    tic = time.perf_counter()
    texts = machine.get_screen_text_variants()
    all_variants_s.append(time.perf_counter() - tic)
    if not any("OCR WORLD" in t for t in texts):
        raise RuntimeError(f"no variant read the text: {texts}")
    tic = time.perf_counter()
    machine.wait_for_text("OCR WORLD")
    early_exit_s.append(time.perf_counter() - tic)
    tic = time.perf_counter()
    if "OCR WORLD" not in machine.get_screen_text():
        raise RuntimeError("the raw screen's text lacks the text")
    raw_s.append(time.perf_counter() - tic)

with open(os.environ["NTNG_BENCH_RESULT"], "w") as f:
    json.dump({"all_variants_s": all_variants_s, "early_exit_s": early_exit_s, "raw_s": raw_s}, f)
