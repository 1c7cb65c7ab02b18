"""Soak: a tiny model trained for many steps with frequent checkpoints and an evaluation every epoch
(tiny-vae on all 1,797 digits: 44 steps per epoch, so 20,000 steps are about 450 epochs, each with
validation, SWD of 64 samples, two grids and a checkpoint),
while a sampler thread records the process's resident memory and open file descriptors. Neither
may grow: the JSON compares the first and the last quarter of the run.

    cd benchmarks && python soak.py --steps 20000 --out results/soak-cpu.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from common import write_result


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-vae")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from genlab.api import train as start_training
    from genlab.resolve import load_config

    runs = Path(tempfile.mkdtemp(prefix="genlab-soak-"))
    cfg = load_config(args.preset, [f"train.max_steps={args.steps}", "train.epochs=1000000", "data.limit=null",
                                    f"train.checkpoint_every={args.checkpoint_every}", "train.log_every=50",
                                    "eval.every=1", "eval.metrics=[swd]", "eval.n=64", "train.grid_every=1",
                                    "train.num_samples=16"])
    samples: list[tuple[float, float, int]] = []
    done = threading.Event()

    def sample() -> None:
        start = time.perf_counter()
        while not done.is_set():
            samples.append((round(time.perf_counter() - start, 2), rss_mb(), open_fds()))
            done.wait(args.interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    run = start_training(cfg, runs, torch.device("cpu"), quiet=True)
    wall = time.perf_counter() - start
    done.set()
    thread.join()
    checkpoints_written = args.steps // args.checkpoint_every
    quarter = max(len(samples) // 4, 1)
    first, last = samples[:quarter], samples[-quarter:]
    result = {
        "preset": args.preset, "steps": args.steps, "checkpoint_every": args.checkpoint_every,
        "epochs": len(list((run / "samples").glob("*.png"))), "checkpoints_written_at_least": checkpoints_written,
        "wall_s": round(wall, 1), "samples": len(samples),
        "rss_mb_first_quarter_median": round(statistics.median(s[1] for s in first), 1),
        "rss_mb_last_quarter_median": round(statistics.median(s[1] for s in last), 1),
        "rss_mb_max": round(max(s[1] for s in samples), 1),
        "fds_first_quarter_max": max(s[2] for s in first), "fds_last_quarter_max": max(s[2] for s in last),
        "trace_every_10th": samples[::10],
    }
    result["rss_growth_mb"] = round(result["rss_mb_last_quarter_median"] - result["rss_mb_first_quarter_median"], 1)
    result["fd_growth"] = result["fds_last_quarter_max"] - result["fds_first_quarter_max"]
    print({k: v for k, v in result.items() if k != "trace_every_10th"})
    write_result(args.out, result, torch.device("cpu"))
    shutil.rmtree(runs, ignore_errors=True)


if __name__ == "__main__":
    main()
