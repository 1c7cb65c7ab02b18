"""Who runs a sweep's runs. A runner takes {run name: [command lines]} and calls ``done(name,
returncode)`` as each run ends; the sweep knows nothing else about it.

- :class:`LocalRunner`: N subprocesses at a time on this machine, each with an equal share of
  the CPU cores (OMP/MKL threads), its output in ``logs/<run>.log``.
- :class:`RayRunner`: each run a Ray task on an existing cluster (``ray.init(address=...)``),
  with its GPU and CPU request; the sweep folder must be on storage every node sees.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

from genlab.errors import GenlabError


def run_commands(commands: list[list[str]], log_path: str, env: dict | None = None) -> int:
    """Each command in turn (train, then evaluate), output appended to ``log_path``; the first
    non-zero exit code, else 0."""
    with open(log_path, "a") as out:
        for command in commands:
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=env)
            if code != 0:
                return code
    return 0


class LocalRunner:
    def __init__(self, parallel: int = 1):
        if parallel < 1:
            raise GenlabError(f"--parallel must be at least 1, got {parallel}")
        self.parallel = parallel

    def describe(self) -> str:
        return f"local, {self.parallel} at a time"

    def run(self, jobs: dict[str, list[list[str]]], logs: Path, done: Callable[[str, int], None]) -> None:
        threads = max(1, (os.cpu_count() or 1) // self.parallel)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        with ThreadPoolExecutor(self.parallel) as pool:
            futures = {pool.submit(run_commands, cmds, str(logs / f"{name}.log"), env): name for name, cmds in jobs.items()}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    done(futures[future], future.result())


class RayRunner:
    """Each run a Ray task requesting ``gpus`` GPUs and ``cpus`` CPUs, on the cluster at ``address``
    ("auto": the one this machine belongs to; None: start a local single-node instance)."""

    def __init__(self, address: str | None = "auto", gpus: float = 0, cpus: float = 1):
        if importlib.util.find_spec("ray") is None:
            raise GenlabError("--runner ray needs Ray: pip install 'genlab[ray]'")
        self.address, self.gpus, self.cpus = address, gpus, cpus

    def describe(self) -> str:
        return f"ray ({self.address or 'local instance'}, {self.gpus} GPU and {self.cpus} CPU per run)"

    def run(self, jobs: dict[str, list[list[str]]], logs: Path, done: Callable[[str, int], None]) -> None:
        import ray  # deferred: the optional extra genlab[ray], checked for in __init__

        started_here = not ray.is_initialized()
        if started_here:
            kwargs = {"address": self.address} if self.address else {"num_cpus": max(1, int(self.cpus))}
            ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
        try:
            task = ray.remote(num_gpus=self.gpus, num_cpus=self.cpus)(run_commands)
            threads = str(max(1, int(self.cpus)))
            env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
            refs = {task.remote(cmds, str(logs / f"{name}.log"), env): name for name, cmds in jobs.items()}
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    done(refs[ref], ray.get(ref))
                time.sleep(0)
        finally:
            if started_here:
                ray.shutdown()
