"""Diagnostic: log every garbage-collector pass of 5 ms or more, per process.

Put this directory on PYTHONPATH and name an output directory, and every Python process started
with that environment (the benchmark, daphne, the workers) writes ``<pid>.txt`` there at exit,
its command line first, then one line per long pass: wall-clock time, generation, duration::

    GCPROBE_DIR=/tmp/gc PYTHONPATH=bench/gcprobe .venv/bin/python bench/live_latency.py \\
        --followers 1000 --layer pubsub --no-docs

The wall-clock times line up with ``wall_answer`` of each tweet in the result JSON. This is
how the p99 outliers at 1,000 followers were traced to full collections in daphne
(docs/benchmarks.md). Without GCPROBE_DIR it does nothing.
"""

import atexit
import gc
import os
import sys
import time

_out = os.environ.get("GCPROBE_DIR")
if _out:
    _started = [0.0]
    _passes: list[tuple[float, int, float, int]] = []

    def _record(phase: str, info: dict) -> None:
        if phase == "start":
            _started[0] = time.perf_counter()
            return
        took = time.perf_counter() - _started[0]
        if took >= 0.005:
            _passes.append((time.time(), info["generation"], took, info.get("collected", 0)))

    def _write() -> None:
        with open(os.path.join(_out, f"{os.getpid()}.txt"), "w") as f:
            f.write(" ".join(getattr(sys, "orig_argv", sys.argv)) + "\n")
            for when, generation, took, collected in _passes:
                f.write(f"{when:.3f} gen{generation} {took * 1000:.1f}ms collected={collected}\n")

    gc.callbacks.append(_record)
    atexit.register(_write)
