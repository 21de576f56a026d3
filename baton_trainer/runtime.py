"""What a process runs on: the torch device it picks and the library versions every run folder
records (TANGO users lost results to version skew: declare-lab/tango issues 5, 28, 39, 51, 58)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import socket
import time
from pathlib import Path

import torch

from .atomic import atomic_write_bytes

VERSIONED_PACKAGES = ("baton-trainer", "torch", "diffusers", "transformers", "accelerate", "peft", "datasets", "numpy")


def pick_device(name: str | None = None):
    """`name` as a torch device, or CUDA when available, else the CPU."""

    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def library_versions() -> dict[str, str]:
    """Python's and each library's version ("not installed" for one that is missing)."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def use_the_cores_accelerate_launch_took() -> int | None:
    """`accelerate launch` run without `--cpu` or a config file sets OMP_NUM_THREADS=1 for its
    processes, so on a machine without a GPU a single process computes on one core: the default
    run took 1.3-1.6x as long as on two. Such a process gets a torch thread per physical core it
    may use, what accelerate itself gives a single process with `--cpu`. Several processes, a GPU,
    a launch by anything else, or OMP_NUM_THREADS set to anything but 1 keep their threads.
    Returns the thread count it set, or None."""
    import psutil  # accelerate's own dependency, as it counts cores the same way

    launched = "ACCELERATE_MIXED_PRECISION" in os.environ and os.environ.get("ACCELERATE_USE_CPU", "False") == "False"
    if not launched or os.environ.get("OMP_NUM_THREADS") != "1" or int(os.environ.get("WORLD_SIZE", "1")) != 1 or torch.cuda.is_available():
        return None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = max(1, min(usable, psutil.cpu_count(logical=False) or usable))
    if cores == 1:
        return None
    torch.set_num_threads(cores)
    return cores


TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def torch_dtype(name: str):
    """The torch dtype of a config's "fp32" | "bf16" | "fp16"."""

    if name not in TORCH_DTYPES:
        raise ValueError(f"unknown dtype {name!r} (expected one of {', '.join(TORCH_DTYPES)})")
    return getattr(torch, TORCH_DTYPES[name])


class RankTimeoutError(RuntimeError):
    """A process of a sharded stage did not finish in time; the message names it."""


class Ranks:
    """This process's share of a stage run under `accelerate launch --num_processes N` (or
    torchrun; several nodes included): `index` of `count`, from accelerate's `PartialState`.

    Work is split by `shard(items)` (every count-th item from index: the same split on every rank
    when every rank holds the same list). The end of a sharded stage is a finish line in files,
    not a collective barrier, so that a slow or dead rank is named instead of waited on for ever:
    each rank writes `<markers>/<index>.json` (its host, pid and progress; `progress` updates it;
    `markers` is a folder of the stage's own), and the main process waits for all of them up to
    `timeout_s`, printing who is late.
    """

    def __init__(self, index: int = 0, count: int = 1, device=None, state=None):
        self.index, self.count, self.device, self._state = index, count, device, state

    @classmethod
    def current(cls) -> "Ranks":
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()  # one process: no process group to set up
        # lazy: only several processes need accelerate
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env

        # PartialState, unlike Accelerator, does not read ACCELERATE_USE_CPU itself.
        state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
        return cls(state.process_index, state.num_processes, state.device, state)

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def shard(self, items: list) -> list:
        return items[self.index :: self.count]

    def shard_batches(self, items: list, batch_size: int) -> list[list]:
        """This rank's whole batches of `items`: an item sits in the same batch under any number of
        processes (batched kernels round by batch shape, so this keeps outputs byte for byte)."""
        return self.shard([items[i : i + batch_size] for i in range(0, len(items), batch_size)])

    def barrier(self) -> None:
        if self._state is not None:
            self._state.wait_for_everyone()

    def device_for(self, name: str | None):
        """The configured device, or (several processes, none configured) this rank's own one."""
        return pick_device(name) if name or self.count == 1 or self.device is None else self.device

    def _marker(self, markers, index: int):
        return Path(markers) / f"{index}.json"

    def clear(self, markers) -> None:
        """Main process: forget a finish line (before the start barrier: an earlier, killed run's)."""

        shutil.rmtree(markers, ignore_errors=True)

    def progress(self, markers, done: int, total: int, finished: bool = False) -> None:
        if self.count == 1:
            return
        path = self._marker(markers, self.index)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"rank": self.index, "host": socket.gethostname(), "pid": os.getpid(), "done": done, "total": total, "finished": finished}
        atomic_write_bytes(path, json.dumps(record).encode())

    def finish(self, markers, done: int, total: int, what: str, timeout_s: float = 3600.0, poll_s: float = 0.2) -> None:
        """Mark this rank finished; on the main process, wait until every rank is (or raise
        `RankTimeoutError` naming the ranks that are not, with their host, pid and progress)."""

        if self.count == 1:
            return
        self.progress(markers, done, total, finished=True)
        if not self.is_main:
            return

        def describe(i: int, records: dict) -> str:
            r = records[i]
            return f"rank {i}" + (f" (host {r['host']}, pid {r['pid']}, {r['done']} of {r['total']} done)" if r else " (no progress reported)")

        start, last_report = time.time(), time.time()
        while True:
            records = {}
            for i in range(self.count):
                try:
                    records[i] = json.loads(self._marker(markers, i).read_text())
                except (OSError, ValueError):
                    records[i] = None
            late = [i for i, r in records.items() if not (r and r.get("finished"))]
            if not late:
                return
            waited = time.time() - start
            if waited > timeout_s:
                raise RankTimeoutError(
                    f"{what}: {', '.join(describe(i, records) for i in late)} did not finish within {timeout_s:.0f} s; "
                    "what every rank finished is kept: rerun the same command to make the rest"
                )
            if time.time() - last_report > 60:
                print(f"{what}: waiting for {', '.join(describe(i, records) for i in late)}", flush=True)
                last_report = time.time()
            time.sleep(poll_s)
