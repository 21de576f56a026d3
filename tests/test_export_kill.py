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
import os, signal, sys
from pathlib import Path
import safetensors.torch
import torch
from baton_trainer.stages.finetune import FinetuneConfig
from baton_trainer.trainer import DiffusionTrainer

# One thread: the trainer is built once and each kill point runs in a fork() of this process, and
# a fork is only safe while no OpenMP worker threads exist. (Building the trainer is the slow part.)
torch.set_num_threads(1)
world, seed, outs = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]  # outs: "KILL_AT:FOLDER", 0 = no kill
config = FinetuneConfig(run_dir=str(world / "run"), model=str(world / "tango"), feedback_dataset=str(world / "feedback"), reward_dataset="none",
                        pretrain_dataset=str(world / "pretrain"), output_dir=str(world / "unused"), cache_dir=str(world / "cache"), use_lora=True,
                        lora_rank=4, report_to="none", duration_s=0.32, seed=seed)
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
for item in outs:
    pid = os.fork()
    if pid == 0:  # the child exports (and is killed at its kill_at-th write); the parent waits
        kill_at, folder = item.split(":", 1)
        kill_at, out = int(kill_at), folder
        trainer.output_dir = Path(out)
        trainer.config.output_dir = out
        trainer.export({"global_step": 0})
        print("WRITES", writes, flush=True)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print("STATUS", item, -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status), flush=True)
"""


def exports_in_child(world: Path, kills: dict[str, int], seed: int = 0) -> tuple[dict[str, int], int | None, str]:
    """Exports into each folder of `kills`, each killed at its write (0: not killed); returns the
    exit code per folder (-9 when killed), the write count of an unkilled export, and stderr."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(world), str(seed), *(f"{k}:{folder}" for folder, k in kills.items())],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    codes = {}
    for line in result.stdout.splitlines():
        if line.startswith("STATUS "):
            item, code = line.split()[1:]
            codes[item.split(":", 1)[1]] = int(code)
    writes = [int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("WRITES ")]
    return codes, (writes[0] if writes else None), result.stderr


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
    codes, writes, err = exports_in_child(world, {str(whole): 0})
    assert codes == {str(whole): 0} and writes is not None, err[-2000:]
    assert writes >= 5  # the marker's removal and write, the config, versions and summary, the adapter
    expected = folder_bytes(whole)
    if previous:  # a complete export of another model (another seed: other adapter weights)
        assert exports_in_child(world, {str(older): 0}, seed=1)[0] == {str(older): 0}
        assert folder_bytes(older) != expected
    killed = {str(tmp_path / f"killed_{k}"): k for k in range(1, writes + 1)}
    if previous:
        for folder in killed:
            shutil.copytree(older, folder)
    codes, _, err = exports_in_child(world, killed)
    for folder, k in killed.items():
        out = Path(folder)
        assert codes.get(folder) == -9, f"write {k}: the export was not killed ({codes.get(folder)}): {err[-2000:]}"
        if accepted_as_export(world, out):  # the whole new export, or (killed before its first change) the old one untouched
            wholes = [expected, folder_bytes(older)] if previous else [expected]
            assert folder_bytes(out) in wholes, f"killed at write {k} of {writes}: {out} passes as an export but is no whole export"
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
