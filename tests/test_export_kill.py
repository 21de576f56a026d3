"""A fine-tune killed during its export never leaves a folder that a stage accepts as an export.

A child process exports a tiny model's adapter and is killed (SIGKILL) at its k-th file write into
the export folder, for every k (each export a fork of one process that built the trainer once): each write (a file opened for writing, a rename, a removal, a
safetensors file) is seen through an audit hook. After each kill the folder must either fail every
reader's check (no export marker: loading it as an export is refused) or be a whole export, byte
for byte: the new one, or the previous one untouched when the kill came before its first change. It runs into an empty folder and over a previous, different, complete export (whose
marker must not vouch for the new half-written files).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import save_preference, save_pretrain  # noqa: E402

CHILD = r"""
import os, shutil, signal, sys
from pathlib import Path
import safetensors.torch
import torch
from baton_trainer.stages.finetune import FinetuneConfig
from baton_trainer.trainer import DiffusionTrainer

# One thread: the trainer is built once and each export runs in a fork() of this process, and a
# fork is only safe while no OpenMP worker threads exist. (Building the trainer is the slow part.)
torch.set_num_threads(1)
world, items = Path(sys.argv[1]), sys.argv[2:]
config = FinetuneConfig(run_dir=str(world / "run"), model=str(world / "tango"), feedback_dataset=str(world / "feedback"), reward_dataset="none",
                        pretrain_dataset=str(world / "pretrain"), output_dir=str(world / "unused"), cache_dir=str(world / "cache"), use_lora=True,
                        lora_rank=4, report_to="none", duration_s=0.32, seed=0)
trainer = DiffusionTrainer(config)
kill_at, out, writes = 0, None, 0

def write(what):
    global writes
    writes += 1
    if writes == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

def hook(event, args):
    if out is None:
        return
    if event == "open" and str(args[0]).startswith(out) and (args[1] is None or any(c in str(args[1]) for c in "wax+")):
        if args[1] is not None or (args[2] or 0) & (os.O_WRONLY | os.O_RDWR):
            write(args[0])
    elif event in ("os.rename", "os.remove") and any(str(a).startswith(out) for a in args[:2]):
        write(args[0])

save_file = safetensors.torch.save_file
def counted_save_file(tensors, filename, *a, **k):  # safetensors writes from native code: no audit event
    if out is not None and str(filename).startswith(out):
        write(filename)
    return save_file(tensors, filename, *a, **k)
safetensors.torch.save_file = counted_save_file
sys.addaudithook(hook)

def export_in_fork(folder, kill, other=False):
    # the fork exports (an unkilled one exits with its write count); returns the fork's status
    pid = os.fork()
    if pid == 0:
        global kill_at, out
        kill_at, out = kill, folder
        if other:  # another model: other adapter weights
            with torch.no_grad():
                for p in trainer.trainable_params:
                    p.add_(0.05)
        trainer.output_dir = Path(folder)
        trainer.config.output_dir = folder
        trainer.export({"global_step": 0})
        os._exit(writes)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)

# items: "whole:FOLDER" or "other:FOLDER" (exported unkilled; prints its write count), then
# "each:PREFIX[:OLDER]": one export per write k of the last unkilled one into PREFIX<k> (a copy of
# OLDER first, when given), killed at that write.
last_writes = 0
for item in items:
    kind, rest = item.split(":", 1)
    if kind in ("whole", "other"):
        last_writes = export_in_fork(rest, 0, other=kind == "other")
        print("WRITES", rest, last_writes, flush=True)
        continue
    prefix, _, older = rest.partition(":")
    for k in range(1, last_writes + 1):
        folder = f"{prefix}{k}"
        if older:
            shutil.copytree(older, folder)
        print("STATUS", folder, k, export_in_fork(folder, k), flush=True)
"""


def exports_in_child(world: Path, items: list[str]) -> tuple[dict[str, int], dict[str, tuple[int, int]], str]:
    """One child process, one trainer, the exports of `items` (see CHILD) each in a fork: returns
    each unkilled export's write count and each killed export's (kill point, exit code: -9 when killed)."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(world), *items],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    writes, killed = {}, {}
    for line in result.stdout.splitlines():
        if line.startswith("WRITES "):
            folder, count = line.split()[1:]
            writes[folder] = int(count)
        elif line.startswith("STATUS "):
            folder, k, code = line.split()[1:]
            killed[folder] = (int(k), int(code))
    return writes, killed, result.stderr


def accepted_as_export(world: Path, out: Path) -> bool:
    """Whether the readers take `out` as an export: the run stage's and online rounds' marker check,
    and the backend loader every other stage goes through (it refuses a folder without the marker)."""
    from baton_trainer.backends import EXPORT_FILE, load_backend

    marked = (out / EXPORT_FILE).is_file()
    try:
        load_backend(str(world / "tango"), export=str(out))
        loads = True
    except (FileNotFoundError, ValueError, OSError):
        loads = False
    assert marked == loads, f"the marker check ({marked}) and the loader ({loads}) disagree on {out}"
    return loads


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of an export but its config (which names the folder itself), by relative path."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name != "finetune_config.json")
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in files}


@pytest.mark.slow
@pytest.mark.parametrize("previous", [False, True], ids=["empty-folder", "over-a-previous-export"])
def test_an_export_killed_at_any_write_is_never_taken_for_an_export(tmp_path, previous):
    from baton_trainer.testing import save_tiny_tango

    world = tmp_path / "world"
    save_tiny_tango(world / "tango")
    save_preference(world / "feedback", n=4)
    save_pretrain(world / "pretrain", n=4)
    whole, older = tmp_path / "whole", tmp_path / "older"
    # a complete export of another model first (other adapter weights), then the whole export, then one killed at each of its writes
    items = [f"other:{older}"] if previous else []
    items += [f"whole:{whole}", f"each:{tmp_path / 'killed_'}" + (f":{older}" if previous else "")]
    writes, killed, err = exports_in_child(world, items)
    assert writes[str(whole)] >= 5, err[-2000:]  # the marker's removal and write, the config, versions and summary, the adapter
    expected = folder_bytes(whole)
    if previous:
        assert folder_bytes(older) != expected
    assert sorted(k for k, _ in killed.values()) == list(range(1, writes[str(whole)] + 1))
    for folder, (k, code) in killed.items():
        out = Path(folder)
        assert code == -9, f"write {k}: the export was not killed ({code}): {err[-2000:]}"
        if accepted_as_export(world, out):  # the whole new export, or (killed before its first change) the old one untouched
            wholes = [expected, folder_bytes(older)] if previous else [expected]
            assert folder_bytes(out) in wholes, f"killed at write {k} of {writes[str(whole)]}: {out} passes as an export but is no whole export"
        shutil.rmtree(out, ignore_errors=True)  # a kill at the first write can come before the folder exists
    assert accepted_as_export(world, whole)
    assert json.loads((whole / "train_summary.json").read_text())["global_step"] == 0


def test_an_export_of_one_mode_over_the_other_leaves_only_its_own_weights(tmp_path):
    """A LoRA export over a full one (and back) removes the other mode's files, so the marker
    vouches for exactly one model."""
    from baton_trainer.backends import load_backend
    from baton_trainer.testing import save_tiny_tango

    base = save_tiny_tango(tmp_path / "tango")
    folder = tmp_path / "export"
    model = load_backend(str(base))
    model.save_trained(folder, "full", base=str(base))
    assert (folder / model.denoiser_name).is_dir()
    from peft import LoraConfig

    model.add_lora(LoraConfig(r=2, target_modules=list(model.lora_target_modules)))
    model.save_trained(folder, "lora", base=str(base))
    assert (folder / "pytorch_lora_weights.safetensors").is_file() and not (folder / model.denoiser_name).exists()
    load_backend(str(base), export=str(folder))  # loads as the LoRA export it now is
    load_backend(str(base)).save_trained(folder, "full", base=str(base))
    assert not list(folder.glob("pytorch_lora_weights*")) and (folder / model.denoiser_name).is_dir()
