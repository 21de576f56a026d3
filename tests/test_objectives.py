"""The objectives that learn from the same ratings (`--objective`): Diffusion-DPO, Diffusion-KTO and
reward-ranked fine-tuning beside BATON, on tiny models of every backend."""

import gc
import json
import math

import pytest
import torch
from helpers import save_audio_alpaca, save_pretrain

from baton_trainer.testing import save_tiny_audioldm2, save_tiny_stable_audio, save_tiny_stable_audio_3, save_tiny_tango

OBJECTIVES = ("baton", "dpo", "kto", "reward_ranked")
BACKENDS = {"tango": save_tiny_tango, "audioldm2": save_tiny_audioldm2, "stable_audio": save_tiny_stable_audio, "stable_audio_3": save_tiny_stable_audio_3}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("objectives")
    save_audio_alpaca(root / "alpaca")
    save_pretrain(root / "pretrain", n=4)
    return root


def config(world, base, out, **overrides):
    from baton_trainer.stages.finetune import FinetuneConfig

    values = dict(
        run_dir=str(world / "run"), model=str(base), pairwise_dataset=str(world / "alpaca"), feedback_dataset="none", reward_dataset="none",
        pretrain_dataset=str(world / "pretrain"), output_dir=str(out), cache_dir=str(world / "cache"), train_batch_size=2, max_train_steps=1,
        learning_rate=1e-2, report_to="none", use_lora=True, lora_rank=4, duration_s=0.32, seed=3,
    )
    values.update(overrides)
    return FinetuneConfig(**values)


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_an_audio_alpaca_dataset_trains_one_step_of_each_objective_on_every_backend(world, tmp_path, backend, objective):
    from safetensors.torch import load_file

    from baton_trainer.trainer import RewardWeightedDiffusionTrainer

    base = world / backend
    if not base.exists():
        BACKENDS[backend](base)
    out = RewardWeightedDiffusionTrainer(config(world, base, tmp_path / "out", objective=objective)).train()
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == 1 and math.isfinite(summary["final_loss"])
    lora = load_file(out / "pytorch_lora_weights.safetensors")
    assert any(("lora.up" in k or "lora_B" in k) and v.abs().max() > 0 for k, v in lora.items())  # the step moved the adapter off its zero start


@pytest.mark.parametrize("use_lora", [True, False])
def test_at_the_start_dpo_and_kto_see_the_reference_equal_the_model(world, tmp_path, use_lora):
    """Before any step the trained model is the base model (LoRA starts at zero; full fine-tuning
    copies it), so DPO's loss is log 2 and KTO's is 1/2 with lambda 1, whatever the batch."""
    from baton_trainer.trainer import RewardWeightedDiffusionTrainer

    save_tiny_tango(world / "tango") if not (world / "tango").exists() else None
    for objective, key, expected in (("dpo", "loss_dpo", math.log(2)), ("kto", "loss_kto", 0.5)):
        trainer = RewardWeightedDiffusionTrainer(config(world, world / "tango", tmp_path / objective, objective=objective, use_lora=use_lora))
        feedback, pretrain = trainer.load_data()
        _, logs = trainer.training_loss(feedback, pretrain, step=0, micro=0)
        assert logs[key] == pytest.approx(expected, abs=1e-6)


def test_dpo_gives_the_preferred_and_the_rejected_clip_the_same_noise_and_timestep(world, tmp_path):
    """A pair of one clip with itself has equal losses only if both halves were noised alike: after
    training steps (model != reference) its DPO loss stays exactly log 2."""
    from baton_trainer.latent_cache import PairedSet
    from baton_trainer.trainer import RewardWeightedDiffusionTrainer

    save_tiny_tango(world / "tango") if not (world / "tango").exists() else None
    trainer = RewardWeightedDiffusionTrainer(config(world, world / "tango", tmp_path / "dpo", objective="dpo", max_train_steps=3))
    feedback, pretrain = trainer.load_data()
    trainer.train(feedback, pretrain)
    _, moved = trainer.training_loss(feedback, None, step=0, micro=0)
    assert abs(moved["loss_dpo"] - math.log(2)) > 1e-4  # the model has moved away from the reference
    _, same = trainer.training_loss(PairedSet(feedback.chosen, feedback.chosen), None, step=0, micro=0)
    assert same["loss_dpo"] == pytest.approx(math.log(2), abs=1e-6) and same["implicit_margin"] == pytest.approx(0.0, abs=1e-9)


def live_modules_of(kind):
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) is kind)


def test_lora_dpo_never_copies_the_denoiser_and_full_dpo_keeps_one_frozen_copy(world, tmp_path):
    from baton_trainer.trainer import RewardWeightedDiffusionTrainer

    save_tiny_tango(world / "tango") if not (world / "tango").exists() else None
    lora = RewardWeightedDiffusionTrainer(config(world, world / "tango", tmp_path / "lora", objective="dpo", max_train_steps=2))
    kind = type(lora.backend.unet)
    before = live_modules_of(kind)
    lora.train()
    assert lora.reference_unet is None and live_modules_of(kind) == before  # the base is the same module, adapter off
    del lora
    gc.collect()
    full = RewardWeightedDiffusionTrainer(config(world, world / "tango", tmp_path / "full", objective="dpo", use_lora=False, max_train_steps=2))
    assert full.reference_unet is not None and not any(p.requires_grad for p in full.reference_unet.parameters())
    start = {k: v.clone() for k, v in full.reference_unet.state_dict().items()}
    full.train()
    assert all(torch.equal(v, start[k]) for k, v in full.reference_unet.state_dict().items())  # the reference never trains


def test_reward_ranked_trains_on_the_good_clips_only_and_dpo_needs_pairs(world, tmp_path):
    from helpers import save_preference

    from baton_trainer.trainer import RewardWeightedDiffusionTrainer

    save_tiny_tango(world / "tango") if not (world / "tango").exists() else None
    save_preference(tmp_path / "fb", n=6, feedback=[1, 0, 1, 0, 0, 1], reward=[1.0, 0.0, 1.0, 0.0, 0.0, 1.0])  # six captions, one clip each
    common = dict(pairwise_dataset=None, feedback_dataset=str(tmp_path / "fb"))
    trainer = RewardWeightedDiffusionTrainer(config(world, world / "tango", tmp_path / "rr", objective="reward_ranked", **common))
    feedback, _ = trainer.load_data()
    assert len(feedback) == 3 and torch.equal(feedback.weights, torch.ones(3))
    with pytest.raises(ValueError, match="no caption has both"):
        RewardWeightedDiffusionTrainer(config(world, world / "tango", tmp_path / "dpo", objective="dpo", **common)).load_data()
