"""``python -m bench`` (``make bench``): every benchmark in turn, each printing its table.

Each one compares against a baseline measured in the same run; quote the ratios, not the absolute times.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from pathlib import Path

from bench import accuracy, embedded, middleware, pdf_memory, pdf_pipeline, relay, startup
from bench import queue as task_queue

BENCHMARKS = [
    ("relay", relay.main, []),
    ("pdf_pipeline", pdf_pipeline.main, []),
    ("pdf_memory", pdf_memory.main, ["--pages", "200"]),
    ("embedded", embedded.main, []),
    ("accuracy", accuracy.main, []),
    ("startup", startup.main, []),
    ("middleware", middleware.main, []),
    ("queue", task_queue.main, []),
]


def machine() -> str:
    cores = len(os.sched_getaffinity(0))
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{platform.system()} {platform.release()}, Python {platform.python_version()}, {cores} cores ({model})"


def main() -> None:
    only = set(sys.argv[1:])
    print(f"My OCR benchmarks on {machine()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for name, run, argv in BENCHMARKS:
        if only and name not in only:
            continue
        sys.argv = [f"bench.{name}", *argv]
        started = time.perf_counter()
        run()
        print(f"  ({name}: {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
