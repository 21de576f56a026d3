import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import free_port, kill_one_rank_when, run_stage, save_preference, save_pretrain, train, training_data
from safetensors.torch import load_file

from baton_trainer.backends.tango import TangoModel
from baton_trainer.stages.finetune import FinetuneConfig
from baton_trainer.testing import save_tiny_audioldm2, save_tiny_stable_audio, save_tiny_stable_audio_3, save_tiny_tango
from baton_trainer.trainer import DiffusionTrainer


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    save_tiny_tango(root / "model")
    save_tiny_audioldm2(root / "audioldm2")
    save_tiny_stable_audio(root / "stable_audio")
    save_tiny_stable_audio_3(root / "stable_audio_3")
    save_preference(root / "feedback", n=8)
    save_pretrain(root / "pretrain", n=8)
    return root


def make_config(world, out, **overrides):
    values = dict(
        run_dir=str(world / "run"),
        model=str(world / "model"),
        feedback_dataset=str(world / "feedback"),
        pretrain_dataset=str(world / "pretrain"),
        output_dir=str(out),
        cache_dir=str(world / "cache"),
        train_batch_size=4,
        learning_rate=1e-3,
        max_train_steps=4,
        checkpointing_steps=2,
        report_to="none",
        seed=3,
    )
    values.update(overrides)
    return FinetuneConfig(**values)


def unet_state(folder: Path, denoiser: str = "unet") -> dict[str, torch.Tensor]:
    return load_file(str(next((folder / denoiser).glob("*.safetensors"))))


def test_training_lowers_loss_on_fixed_batch(world, tmp_path):
    trainer = DiffusionTrainer(make_config(world, tmp_path / "out", max_train_steps=12, weighting="ones", pretrain_weight=0.0))
    feedback, pretrain = training_data(trainer)
    # One batch holding the whole set and a fixed noise draw (step 0): the same loss before and after.
    feedback.captions, feedback.latents, feedback.text, feedback.weights = (
        feedback.captions[:4],
        feedback.latents[:4],
        feedback.text[:4],
        feedback.weights[:4],
    )
    with torch.no_grad():
        before, _ = trainer.training_loss(feedback, None, 0, 0)
    trainer.train(feedback, None)
    with torch.no_grad():
        after, _ = trainer.training_loss(feedback, None, 0, 0)
    assert after.item() < 0.9 * before.item()


def test_lora_trains_only_adapter_and_export_reloads(world, tmp_path):
    config = make_config(world, tmp_path / "lora", use_lora=True, max_train_steps=3)
    trainer = DiffusionTrainer(config)
    base = {k: v.clone() for k, v in trainer.backend.denoiser.state_dict().items() if "lora" not in k}
    lora_before = {k: v.clone() for k, v in trainer.backend.denoiser.state_dict().items() if "lora_B" in k}
    out = train(trainer)
    after = trainer.accelerator.unwrap_model(trainer.denoiser).state_dict()
    assert all(torch.equal(base[k], after[k]) for k in base), "a non-LoRA parameter changed"
    assert any(not torch.equal(lora_before[k], after[k]) for k in lora_before), "no LoRA parameter changed"
    assert json.loads((out / "baton_export.json").read_text())["mode"] == "lora"

    # Compare sampled latents: the tiny random vocoder maps them to near-silent audio.
    sample = dict(captions=["a dog barks then beep"], seeds=[11], num_inference_steps=3, guidance_scale=2.0)
    expected = trainer.backend.eval().generate_latents(**sample)
    got = TangoModel.from_pretrained(world / "model", export=out).generate_latents(**sample)
    untouched = TangoModel.from_pretrained(world / "model").generate_latents(**sample)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert (untouched - got).abs().max() > 1e-3, "the adapter changed nothing"


@pytest.mark.parametrize("use_lora", [False, True])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(world, tmp_path, use_lora):
    full = DiffusionTrainer(make_config(world, tmp_path / "full", use_lora=use_lora))
    train(full)
    first = DiffusionTrainer(make_config(world, tmp_path / "split", use_lora=use_lora, max_train_steps=2))
    train(first)
    assert (tmp_path / "split" / "checkpoints" / "checkpoint-2").is_dir()
    second = DiffusionTrainer(make_config(world, tmp_path / "split", use_lora=use_lora, resume_from_checkpoint="latest"))
    train(second)
    assert second.global_step == 4
    if use_lora:
        unet = second.accelerator.unwrap_model(second.denoiser)
        assert unet.active_adapters() == ["default"]
        assert any(p.requires_grad for n, p in unet.named_parameters() if "lora" in n)
        a = load_file(str(tmp_path / "full" / "pytorch_lora_weights.safetensors"))
        b = load_file(str(tmp_path / "split" / "pytorch_lora_weights.safetensors"))
    else:
        a, b = unet_state(tmp_path / "full"), unet_state(tmp_path / "split")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)


def test_epochs_count_passes_over_the_feedback_mix(world, tmp_path):
    # The paper trains a fixed number of epochs: BATON's 1:1 mix of human and reward rows takes
    # twice the steps of human-only feedback; without feedback the epochs count the pretrain set.
    reward = save_preference(tmp_path / "reward", n=12, seed=5, source=["reward_model"] * 12)
    steps = {}
    for name, overrides in {
        "human_only": {},
        "baton": {"reward_dataset": str(reward)},
        "pretrain_term_alone": {"reward_dataset": str(reward), "weighting": "none"},
    }.items():
        config = make_config(world, tmp_path / name, max_train_steps=None, num_epochs=3, train_batch_size=2, pretrain_batch_size=4, **overrides)
        trainer = DiffusionTrainer(config)
        steps[name] = trainer.num_training_steps(*training_data(trainer))
    assert steps == {"human_only": 3 * 8 // 2, "baton": 3 * 16 // 2, "pretrain_term_alone": 3 * 8 // 4}


def test_a_run_resumed_at_its_final_step_finishes_and_reports_its_last_loss(world, tmp_path):
    first = DiffusionTrainer(make_config(world, tmp_path / "done", max_train_steps=2, checkpointing_steps=1))
    train(first)
    summary = json.loads((tmp_path / "done" / "train_summary.json").read_text())
    again = DiffusionTrainer(make_config(world, tmp_path / "done", max_train_steps=2, checkpointing_steps=1, resume_from_checkpoint="latest"))
    train(again)  # no step is left to take
    resumed = json.loads((tmp_path / "done" / "train_summary.json").read_text())
    assert resumed["global_step"] == 2 and resumed["final_loss"] == summary["final_loss"] and np.isfinite(resumed["final_loss"])


def test_checkpoint_limit_keeps_last_n(world, tmp_path):
    trainer = DiffusionTrainer(make_config(world, tmp_path / "ck", max_train_steps=4, checkpointing_steps=1, checkpoints_total_limit=2))
    train(trainer)
    assert sorted(p.name for p in (tmp_path / "ck" / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-4"]


def test_bf16_autocast_runs_on_cpu(world, tmp_path, own_accelerator_state):
    trainer = DiffusionTrainer(make_config(world, tmp_path / "bf16", mixed_precision="bf16", use_lora=True, max_train_steps=2))
    out = train(trainer)
    summary = json.loads((out / "train_summary.json").read_text())
    assert np.isfinite(summary["final_loss"])
    assert all(p.dtype == torch.float32 for p in trainer.trainable_params)
    assert next(trainer.backend.vae.parameters()).dtype == torch.bfloat16


def test_cached_and_uncached_encodings_agree(world, tmp_path):
    cached = DiffusionTrainer(make_config(world, tmp_path / "c"))
    fb_c, _ = training_data(cached)
    loss_c, _ = cached.training_loss(fb_c, None, 1, 0)
    plain = DiffusionTrainer(make_config(world, tmp_path / "u", cache_embeddings=False))
    fb_u, _ = training_data(plain)
    loss_u, _ = plain.training_loss(fb_u, None, 1, 0)
    assert loss_c.item() == pytest.approx(loss_u.item(), rel=1e-4)


def run_cli(args, env_extra=None, torchrun=None, wait=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "baton_trainer", "finetune", *args]
    if torchrun:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(torchrun),
            "--master_port",
            str(free_port()),
            "-m",
            "baton_trainer",
            "finetune",
            *args,
        ]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
# One DDPM backend (TANGO) and one flow backend: the sharding, all-reduce and accumulation are the
# trainer's, shared by every backend; each backend's own step is covered one-process in
# its test_backend_<name>.py (four backends here cost 80 s of a 15-minute suite).
@pytest.mark.parametrize("model_name", ["model", "stable_audio_3"])
def test_two_processes_match_one_process_with_the_same_global_batch(world, tmp_path, model_name):
    common = [
        "--model",
        str(world / model_name),
        "--feedback_dataset",
        str(world / "feedback"),
        "--pretrain_dataset",
        str(world / "pretrain"),
        "--max_train_steps",
        "3",
        "--learning_rate",
        "1e-3",
        "--report_to",
        "none",
        "--run_dir",
        str(tmp_path),
        "--duration_s",
        "0.32",  # the tiny models' length (Stable Audio 3's default is 10 s)
    ]
    run_stage("finetune", *common, "--output_dir", str(tmp_path / "one"), "--train_batch_size", "4", "--cache_dir", str(tmp_path / "c1"))
    two = run_cli(
        [*common, "--output_dir", str(tmp_path / "two"), "--train_batch_size", "2", "--cache_dir", str(tmp_path / "c2")],
        env_extra={"ACCELERATE_USE_CPU": "1"},
        torchrun=2,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    denoiser = "transformer" if model_name.startswith("stable_audio") else "unet"
    a, b = unet_state(tmp_path / "one", denoiser), unet_state(tmp_path / "two", denoiser)
    start = unet_state(world / model_name, denoiser)
    moved = max((a[k] - start[k]).abs().max().item() for k in a)
    gap = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"weights moved up to {moved:.2e}; one vs two processes differ by up to {gap:.2e}")
    assert moved > 1e-3
    # The same steps: DDP's all-reduce sums the gradients in another order, and Adam's division by
    # sqrt(v) enlarges that rounding for parameters whose gradients are near zero (measured: one
    # weight of 13,824 off by 3.3e-5 after 3 steps). A different step would differ by about the lr.
    assert gap < 0.05 * moved


@pytest.mark.slow
def test_a_two_process_run_with_a_killed_rank_resumes_to_the_uninterrupted_weights(world, tmp_path):
    """One rank of a 2-process fine-tune is killed mid-run (torchrun then stops the other); the
    rerun resumes at the last checkpoint and ends with the weights of a run nobody killed."""

    def args(out: str) -> list[str]:
        return [
            *("--model", str(world / "model"), "--feedback_dataset", str(world / "feedback"), "--pretrain_dataset", str(world / "pretrain")),
            *("--max_train_steps", "24", "--checkpointing_steps", "2", "--train_batch_size", "2", "--learning_rate", "1e-3", "--report_to", "none"),
            *("--run_dir", str(tmp_path), "--output_dir", str(tmp_path / out), "--cache_dir", str(tmp_path / f"cache_{out}")),
        ]

    whole = run_cli(args("whole"), env_extra={"ACCELERATE_USE_CPU": "1"}, torchrun=2)
    assert whole.returncode == 0, whole.stderr[-3000:]
    proc = run_cli(args("killed"), env_extra={"ACCELERATE_USE_CPU": "1"}, torchrun=2, wait=False)
    assert kill_one_rank_when(proc, (tmp_path / "killed" / "checkpoints" / "checkpoint-2").is_dir) != 0
    assert not (tmp_path / "killed" / "unet").exists()
    resumed = run_cli([*args("killed"), "--resume_from_checkpoint", "latest"], env_extra={"ACCELERATE_USE_CPU": "1"}, torchrun=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    step = re.search(r"resumed from \S*checkpoint-\d+ at step (\d+)", resumed.stdout + resumed.stderr)
    assert step and 2 <= int(step.group(1)) < 24  # the finished steps are not taken again
    a, b = unet_state(tmp_path / "whole"), unet_state(tmp_path / "killed")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_dpo_and_kto_on_two_processes_match_one_process(world, tmp_path, objective):
    """The pairs' shared noise and KTO's reference point are drawn and averaged over the global
    batch, so two processes of batch 2 take the steps one process of batch 4 takes."""
    from helpers import save_audio_alpaca

    save_audio_alpaca(tmp_path / "alpaca", n_prompts=2, pairs_per_prompt=4)
    common = [
        "--model",
        str(world / "model"),
        "--pairwise_dataset",
        str(tmp_path / "alpaca"),
        "--feedback_dataset",
        "none",
        "--reward_dataset",
        "none",
        "--pretrain_dataset",
        str(world / "pretrain"),
        "--objective",
        objective,
        "--max_train_steps",
        "3",
        "--learning_rate",
        "1e-3",
        "--report_to",
        "none",
        "--run_dir",
        str(tmp_path),
    ]
    run_stage("finetune", *common, "--output_dir", str(tmp_path / "one"), "--train_batch_size", "4", "--cache_dir", str(tmp_path / "c1"))
    two = run_cli(
        [*common, "--output_dir", str(tmp_path / "two"), "--train_batch_size", "2", "--cache_dir", str(tmp_path / "c2")],
        env_extra={"ACCELERATE_USE_CPU": "1"},
        torchrun=2,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b, start = unet_state(tmp_path / "one"), unet_state(tmp_path / "two"), unet_state(world / "model")
    moved = max((a[k] - start[k]).abs().max().item() for k in a)
    gap = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"{objective}: weights moved up to {moved:.2e}; one vs two processes differ by up to {gap:.2e}")
    assert moved > 1e-4 and gap < 0.05 * moved
