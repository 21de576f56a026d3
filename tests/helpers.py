"""Small data makers shared by the tests (tiny wav clips and preference datasets), and a CPU memory meter."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import weakref
from pathlib import Path

import datasets
import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from baton_trainer.audio import wav_bytes
from baton_trainer.data import PRETRAIN_FEATURES, build_dataset


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it): servers and torchrun rendezvous of tests
    that run at the same time, in one process or in parallel workers, never share one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_one_rank_when(launcher: subprocess.Popen, ready, timeout_s: float = 300) -> int:
    """Wait until `ready()` holds while the torchrun `launcher` still runs, SIGKILL one of its ranks
    (torchrun then stops the others) and return the launcher's exit code."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and launcher.poll() is None and not ready():
        time.sleep(0.02)
    ranks = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    assert launcher.poll() is None and ranks, "the run finished before a rank could be killed"
    os.kill(int(ranks[-1]), signal.SIGKILL)
    return launcher.wait(timeout=timeout_s)


def tone(freq: float, seconds: float = 0.32, sr: int = 16000, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    noise = np.random.default_rng(seed).normal(0, 0.01, t.shape)
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def preference_rows(n: int, seed: int = 0, seconds: float = 0.32) -> dict:
    rng = np.random.default_rng(seed)
    captions = [f"a dog barks then {w}" for w in ("beep", "hum", "hiss", "click", "chirp", "rumble", "siren", "music")]
    feedback = rng.integers(0, 2, n)
    return {
        "caption": [captions[i % len(captions)] for i in range(n)],
        "audio": [{"bytes": wav_bytes(tone(200 + 150 * i, seconds, seed=i), 16000), "path": f"clip{i}.wav"} for i in range(n)],
        "feedback": feedback.tolist(),
        "reward": feedback.astype(float).tolist(),
        "source": ["human"] * n,
        "task": ["temporal" if i % 2 else "integrity" for i in range(n)],
        "labels": [["dog", "beep"]] * n,
        "caption_id": list(range(n)),
        "clip_index": [0] * n,
        "annotator": ["tester"] * n,
    }


def save_preference(folder: Path, n: int = 8, seed: int = 0, **overrides) -> Path:
    rows = preference_rows(n, seed)
    rows.update(overrides)
    build_dataset(rows).save_to_disk(str(folder))
    return folder


def save_pretrain(folder: Path, n: int = 8) -> Path:
    rows = preference_rows(n, seed=99)
    build_dataset({"caption": rows["caption"], "audio": rows["audio"]}, PRETRAIN_FEATURES).save_to_disk(str(folder))
    return folder


def save_audio_alpaca(folder, n_prompts=3, pairs_per_prompt=2):
    """A pairwise dataset with Audio-Alpaca's schema (prompt, chosen, rejected, strategy)."""
    prompts = ["a dog barks then beep", "rain falls with hum", "birds chirp followed by a siren"][:n_prompts]
    rows = [(p, k) for p in prompts for k in range(pairs_per_prompt)]
    clip = lambda i: {"bytes": wav_bytes(tone(250 + 40 * i, seed=i), 16000), "path": f"{i}.wav"}  # noqa: E731
    struct = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    features = datasets.Features({"prompt": datasets.Value("string"), "chosen": struct, "rejected": struct, "strategy": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(
        {
            "prompt": [p for p, _ in rows],
            "chosen": [clip(2 * i) for i in range(len(rows))],
            "rejected": [clip(2 * i + 1) for i in range(len(rows))],
            "strategy": ["Multiple Inference"] * len(rows),
        },
        features=features,
    )
    ds.cast_column("chosen", datasets.Audio(decode=False)).cast_column("rejected", datasets.Audio(decode=False)).save_to_disk(str(folder))
    return folder


def training_data(trainer):
    """The encoded (feedback, pretrain) data the fine-tune stage hands `trainer`."""
    from baton_trainer.stages.finetune import load_training_data

    return load_training_data(trainer.config, trainer.objective, trainer.latent_cache)


def train(trainer):
    """`trainer` trained on its config's data, as the fine-tune stage runs it; returns the export folder."""
    return trainer.train(*training_data(trainer))


def plain_diffusers_latents(base: Path, lora: Path, full: Path, out: Path, prompts: list[str], seeds: list[int], seconds: float, cards: bool = False) -> dict:
    """`tests/plain_diffusers_user.py` on a base model and its LoRA and full exports, in a fresh
    interpreter that cannot import this package: its latents with the adapter and with the full
    denoiser. With `cards`, `lora` and `full` are pushed models' cards, whose diffusers-only lines it runs."""
    import json
    import sys

    import plain_diffusers_user

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(out.parent / "hf_modules")
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # this process's reductions, so the two sides agree to 1e-5
    args = ["--cards", lora, full] if cards else [base, lora, full]
    args += [out, json.dumps(prompts), json.dumps(seeds), seconds]
    result = subprocess.run(
        [sys.executable, plain_diffusers_user.__file__, *map(str, args)], env=env, cwd=out.parent, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "baton_trainer" not in result.stdout
    return {k: torch.from_numpy(v) for k, v in np.load(out).items()}


def run_stage(stage: str, *args: str, threads: int = 1) -> None:
    """`python -m baton_trainer STAGE ARGS` in this process, at `threads` torch threads (as the
    OMP_NUM_THREADS=1 processes it is compared with): the one-process reference of a multi-process
    test, without the ~6 s a fresh interpreter spends importing torch, diffusers and peft again."""
    import os

    import torch

    from baton_trainer.__main__ import main

    previous, debug = torch.get_num_threads(), os.environ.get("BATON_DEBUG")
    torch.set_num_threads(threads)
    os.environ["BATON_DEBUG"] = "1"  # a failure raises with its traceback instead of one line
    try:
        assert main([stage, *args]) == 0
    finally:
        torch.set_num_threads(previous)
        if debug is None:
            os.environ.pop("BATON_DEBUG", None)
        else:
            os.environ["BATON_DEBUG"] = debug


class PeakTensorBytes(TorchDispatchMode):
    """The peak bytes of tensor storage allocated while the mode is on and still alive. torch keeps
    peak-memory statistics for CUDA only (`torch.cuda.max_memory_allocated`), so on CPU every
    operator's outputs are counted here until their storage is freed."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._storages: set[int] = set()

    def _freed(self, key, nbytes):
        self._storages.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
                storage = tensor.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes and key not in self._storages:  # a view or an in-place result adds nothing
                    self._storages.add(key)
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._freed, key, nbytes)
        return out


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages under `tensors`."""
    return sum({t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors}.values())
