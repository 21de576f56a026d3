"""The objectives that learn from the same ratings (`--objective`): Diffusion-DPO, Diffusion-KTO and
reward-ranked fine-tuning beside BATON, on tiny models of every backend."""

import json
import math

import pytest
import torch
from helpers import PeakTensorBytes, save_audio_alpaca, save_pretrain, train, training_data

from baton_trainer.testing import TINY_BACKENDS, save_tiny_tango

OBJECTIVES = ("baton", "dpo", "kto", "reward_ranked")
BACKENDS = TINY_BACKENDS


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("objectives")
    save_audio_alpaca(root / "alpaca")
    save_pretrain(root / "pretrain", n=4)
    return root


def config(world, base, out, **overrides):
    from baton_trainer.stages.finetune import FinetuneConfig

    values = dict(
        run_dir=str(world / "run"),
        model=str(base),
        pairwise_dataset=str(world / "alpaca"),
        feedback_dataset="none",
        reward_dataset="none",
        pretrain_dataset=str(world / "pretrain"),
        output_dir=str(out),
        cache_dir=str(world / "cache"),
        train_batch_size=2,
        max_train_steps=1,
        learning_rate=1e-2,
        report_to="none",
        use_lora=True,
        lora_rank=4,
        duration_s=0.32,
        seed=3,
    )
    values.update(overrides)
    return FinetuneConfig(**values)


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_an_audio_alpaca_dataset_trains_one_step_of_each_objective_on_every_backend(world, tmp_path, backend, objective):
    from safetensors.torch import load_file

    from baton_trainer.trainer import DiffusionTrainer

    base = world / backend
    if not base.exists():
        BACKENDS[backend](base)
    out = train(DiffusionTrainer(config(world, base, tmp_path / "out", objective=objective)))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == 1 and math.isfinite(summary["final_loss"])
    lora = load_file(out / "pytorch_lora_weights.safetensors")
    assert any(("lora.up" in k or "lora_B" in k) and v.abs().max() > 0 for k, v in lora.items())  # the step moved the adapter off its zero start


@pytest.mark.parametrize("use_lora", [True, False])
def test_at_the_start_dpo_and_kto_see_the_reference_equal_the_model(world, tmp_path, use_lora):
    """Before any step the trained model is the base model (LoRA starts at zero; full fine-tuning
    copies it), so DPO's loss is log 2 and KTO's is 1/2 with lambda 1, whatever the batch."""
    from baton_trainer.trainer import DiffusionTrainer

    save_tiny_tango(world / "tango") if not (world / "tango").exists() else None
    for objective, key, expected in (("dpo", "loss_dpo", math.log(2)), ("kto", "loss_kto", 0.5)):
        trainer = DiffusionTrainer(config(world, world / "tango", tmp_path / objective, objective=objective, use_lora=use_lora))
        feedback, pretrain = training_data(trainer)
        _, logs = trainer.training_loss(feedback, pretrain, step=0, micro=0)
        assert logs[key] == pytest.approx(expected, abs=1e-6)


def test_dpo_gives_the_preferred_and_the_rejected_clip_the_same_noise_and_timestep(world, tmp_path):
    """A pair of one clip with itself has equal losses only if both halves were noised alike: after
    training steps (model != reference) its DPO loss stays exactly log 2."""
    from baton_trainer.latent_cache import PairedSet
    from baton_trainer.trainer import DiffusionTrainer

    save_tiny_tango(world / "tango") if not (world / "tango").exists() else None
    trainer = DiffusionTrainer(config(world, world / "tango", tmp_path / "dpo", objective="dpo", max_train_steps=3))
    feedback, pretrain = training_data(trainer)
    trainer.train(feedback, pretrain)
    _, moved = trainer.training_loss(feedback, None, step=0, micro=0)
    assert abs(moved["loss_dpo"] - math.log(2)) > 1e-4  # the model has moved away from the reference
    _, same = trainer.training_loss(PairedSet(feedback.chosen, feedback.chosen), None, step=0, micro=0)
    assert same["loss_dpo"] == pytest.approx(math.log(2), abs=1e-6) and same["implicit_margin"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("objective,use_lora,beta_key", [("dpo", True, "dpo_beta"), ("kto", False, "kto_beta")])
def test_a_rerun_of_the_same_data_reads_the_reference_losses_and_trains_the_same_weights(world, tmp_path, objective, use_lora, beta_key):
    """The first run computes each step's reference loss; a second run of the same data and seed
    (another beta, as a sweep does) computes none and trains exactly what a run without the store
    trains; another seed draws other noise and computes them afresh."""
    from safetensors.torch import load_file

    from baton_trainer.trainer import DiffusionTrainer

    save_tiny_tango(world / "tango") if not (world / "tango").exists() else None
    export = "pytorch_lora_weights.safetensors" if use_lora else "unet/diffusion_pytorch_model.safetensors"

    def run(name, **overrides):
        values = dict(objective=objective, use_lora=use_lora, max_train_steps=3, cache_dir=str(tmp_path / "cache"), **overrides)
        trainer = DiffusionTrainer(config(world, world / "tango", tmp_path / name, **values))
        out = train(trainer)
        store = getattr(trainer.objective, "reference", None) and trainer.objective.reference.store
        return (None if store is None else (store.computed, store.read)), load_file(out / export)

    first, _ = run("first", **{beta_key: 2000.0})
    assert first == (3, 0)
    second, weights = run("second", **{beta_key: 500.0})
    assert second == (0, 3)
    off, expected = run("off", cache_reference_losses=False, **{beta_key: 500.0})
    assert off is None and weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)
    assert run("other_seed", seed=4, **{beta_key: 500.0})[0] == (3, 0)


def test_lora_dpo_needs_no_more_memory_than_lora_baton_and_full_dpo_one_frozen_copy_more(world, tmp_path):
    """Peak tensor memory of a trainer's setup and of two steps, DPO against BATON on the same clips
    per step: under LoRA the reference is the denoiser with its adapter off (no copy, at setup or
    in a step), under full fine-tuning one frozen copy, made once, that never trains."""
    from baton_trainer.trainer import DiffusionTrainer

    save_tiny_tango(world / "tango") if not (world / "tango").exists() else None
    setup, steps, trainers = {}, {}, {}
    for objective, use_lora in (("baton", True), ("dpo", True), ("baton", False), ("dpo", False)):
        with PeakTensorBytes() as memory:
            trainer = DiffusionTrainer(
                config(
                    world,
                    world / "tango",
                    tmp_path / f"{objective}{use_lora}",
                    objective=objective,
                    use_lora=use_lora,
                    train_batch_size=1 if objective == "dpo" else 2,
                    pretrain_batch_size=2,  # DPO's pair is 2 clips
                    max_train_steps=2,
                    cache_reference_losses=False,
                )
            )
        setup[objective, use_lora] = memory.peak
        copy = getattr(trainer.objective, "reference", None) and trainer.objective.reference.frozen  # full fine-tuning's frozen copy
        reference = None if copy is None else {k: v.clone() for k, v in copy.state_dict().items()}
        with PeakTensorBytes() as memory:
            train(trainer)
        steps[objective, use_lora] = memory.peak
        if reference is not None:
            assert all(torch.equal(v, reference[k]) for k, v in copy.state_dict().items())  # the reference never trains
        trainers[objective, use_lora] = trainer
    unet = trainers["baton", True].accelerator.unwrap_model(trainers["baton", True].denoiser)
    unet_bytes = sum(p.numel() * p.element_size() for name, p in unet.named_parameters() if "lora_" not in name)
    print(setup, steps, unet_bytes)
    assert trainers["dpo", True].objective.reference.frozen is None
    assert setup["dpo", True] - setup["baton", True] < 0.25 * unet_bytes
    assert setup["dpo", False] - setup["baton", False] > 0.9 * unet_bytes  # the measure sees a copy
    assert steps["dpo", True] - steps["baton", True] < 0.5 * unet_bytes
    assert steps["dpo", False] - steps["baton", False] < 0.5 * unet_bytes  # the copy is made once, at setup


def test_reward_ranked_trains_on_the_good_clips_only_and_dpo_needs_pairs(world, tmp_path):
    from helpers import save_preference

    from baton_trainer.trainer import DiffusionTrainer

    save_tiny_tango(world / "tango") if not (world / "tango").exists() else None
    save_preference(tmp_path / "fb", n=6, feedback=[1, 0, 1, 0, 0, 1], reward=[1.0, 0.0, 1.0, 0.0, 0.0, 1.0])  # six captions, one clip each
    common = dict(pairwise_dataset=None, feedback_dataset=str(tmp_path / "fb"))
    trainer = DiffusionTrainer(config(world, world / "tango", tmp_path / "rr", objective="reward_ranked", **common))
    feedback, _ = training_data(trainer)
    assert len(feedback) == 3 and torch.equal(feedback.weights, torch.ones(3))
    with pytest.raises(ValueError, match="no caption has both"):
        training_data(DiffusionTrainer(config(world, world / "tango", tmp_path / "dpo", objective="dpo", **common)))


def test_a_new_objective_is_one_class_and_its_registration(world, tmp_path, monkeypatch):
    """The trainer runs whatever objective is registered under the config's name: a class that
    trains the pretraining term alone, registered here, goes through the finetune stage unchanged
    and its loss is the one the loop backpropagates and logs."""
    from safetensors.torch import load_file

    from baton_trainer.objectives import OBJECTIVES, Objective
    from baton_trainer.stages.finetune import finetune

    class PretrainingOnly(Objective):
        name = "pretraining_only"
        needs_feedback = False

        def loss(self, denoiser, feedback, pretrain, step, micro):
            return self.with_pretraining(torch.zeros(()), {}, denoiser, pretrain, step, micro)

    monkeypatch.setitem(OBJECTIVES, PretrainingOnly.name, PretrainingOnly)
    save_tiny_tango(world / "tango") if not (world / "tango").exists() else None
    out = finetune(config(world, world / "tango", tmp_path / "new", objective="pretraining_only", max_train_steps=2, checkpointing_steps=1))
    logs = json.loads((out / "checkpoints" / "checkpoint-1" / "trainer_state.json").read_text())["logs"]
    assert set(logs) == {"loss", "loss_pretrain"} and logs["loss"] == pytest.approx(0.5 * logs["loss_pretrain"])
    lora = load_file(out / "pytorch_lora_weights.safetensors")
    assert any(("lora.up" in k or "lora_B" in k) and v.abs().max() > 0 for k, v in lora.items())  # its loss trained the adapter
