"""The contract every backend passes (docs/backends.md), on a tiny pipeline of its real diffusers and
transformers classes. Each backend's test file (`test_backend_<name>.py`) imports these tests and
the `trained` fixture, names its backend (`BACKEND`, a key of `baton_trainer.testing.TINY_BACKENDS`)
and gives what only it knows: `CFG_DROPOUT` (how often its training drops a caption),
`sampler_inverts` (its pipeline's own sampler against the training target) and
`dropped_as_the_models_training_drops_it` (its null conditioning). `--model` picks the backend from the
folder; training, exports and resuming run unchanged on each."""

import json
from pathlib import Path

import numpy as np
import plain_diffusers_user as plain_user
import pytest
import torch
from helpers import save_preference, save_pretrain, train, training_data

from baton_trainer.backends import TextConditioning, load_backend
from baton_trainer.losses import baton_loss, noised_latents_and_target
from baton_trainer.testing import TINY_BACKENDS

PROMPTS = ["a dog barks then beep", "rain falls with hum"]
SEEDS = [3, 4]
DURATION_S = 0.32


def finetune_config(root, mode, **overrides):
    from baton_trainer.stages.finetune import FinetuneConfig

    values = dict(
        run_dir=str(root / "run"),
        model=str(root / "base"),
        feedback_dataset=str(root / "feedback"),
        pretrain_dataset=str(root / "pretrain"),
        output_dir=str(root / mode),
        cache_dir=str(root / "cache"),
        train_batch_size=4,
        learning_rate=5e-2,
        max_train_steps=3,
        report_to="none",
        use_lora=mode == "lora",
        lora_rank=4,
        seed=1,
        duration_s=DURATION_S,
    )
    values.update(overrides)
    return FinetuneConfig(**values)


class BackendRoot(type(Path())):
    """The trained models' folder, with the test module of its backend (`hooks`)."""

    def __new__(cls, path, hooks):
        self = super().__new__(cls, path)
        self.hooks = hooks
        return self


@pytest.fixture(scope="module")
def trained(request, tmp_path_factory):
    """A tiny base model of the test module's backend and, trained from it, a LoRA export and a full export."""
    from baton_trainer.trainer import DiffusionTrainer

    name = request.module.BACKEND
    root = tmp_path_factory.mktemp(name)
    TINY_BACKENDS[name](root / "base")
    save_preference(root / "feedback", n=8)
    save_pretrain(root / "pretrain", n=8)
    for mode in ("lora", "full"):
        train(DiffusionTrainer(finetune_config(root, mode)))
    return BackendRoot(root, request.module)


def clips(model, prompts=PROMPTS, seeds=SEEDS):
    return model.generate(prompts, seeds, num_inference_steps=3, guidance_scale=3.0, duration_s=DURATION_S)


def test_model_flag_picks_the_backend_and_a_clip_depends_on_its_seed_only(trained):
    model = load_backend(trained / "base")
    assert type(model) is type(load_backend(trained / "base")) and type(model).__module__.endswith(f".{trained.hooks.BACKEND}")
    both = clips(model)
    assert both.shape == (2, int(round(DURATION_S * model.sample_rate))) and both.dtype == np.float32
    scale = np.abs(both).max()
    assert scale > 0 and np.array_equal(clips(model), both)
    alone = clips(model, PROMPTS[1:], SEEDS[1:])
    np.testing.assert_allclose(both[1], alone[0], rtol=0, atol=1e-4 * scale)  # not on its batch neighbours
    other = clips(model, PROMPTS, [SEEDS[0] + 1, SEEDS[1]])
    assert np.abs(other[0] - both[0]).max() > 1e-2 * scale
    with pytest.raises(ValueError, match="finite"):
        model.generate(PROMPTS[:1], [0], num_inference_steps=1, guidance_scale=float("nan"))


def test_the_training_target_is_what_the_pipelines_sampler_inverts(trained):
    """A latent noised to t and handed the true target comes back to x0 through the pipeline's own
    scheduler (the backend's `sampler_inverts`); the loss at the exact target is zero."""
    model = load_backend(trained / "base")
    x0 = torch.randn(2, 4, 16, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    for i in range(0, 10, 3):
        recovered, target = trained.hooks.sampler_inverts(model, x0, noise, i)
        torch.testing.assert_close(recovered, x0, rtol=1e-4, atol=1e-4)
        assert baton_loss(target, target, torch.ones(2))[0].item() == 0.0


def ddpm_sampler_inverts(model, x0, noise, i):
    """A DDPM backend: the scheduler's x0 from the latent noised to its i-th of 10 timesteps."""
    scheduler = model.pipe.scheduler
    scheduler.set_timesteps(10)
    t = torch.full((2,), int(scheduler.timesteps[i]))
    noisy, target = noised_latents_and_target("ddpm", x0, noise, t, model.noise_scheduler)
    return scheduler.step(target, int(t[0]), noisy).pred_original_sample, target


def flow_sampler_inverts(model, x0, noise, i, sigmas):
    """A flow backend sampled by Euler steps on `sigmas` (the pipeline's own grid): a step with the
    true velocity lands on the latent noised to the next sigma, and the DiT is given the scheduler's timestep."""
    scheduler = model.pipe.scheduler
    scheduler.set_timesteps(sigmas=sigmas)  # each check walks from its own timestep
    sigma, sigma_next = (scheduler.sigmas[i : i + 2]).tolist()
    t = torch.full((2,), sigma)
    torch.testing.assert_close(model.denoiser_timestep(t), torch.full((2,), float(scheduler.timesteps[i])))
    noisy, target = noised_latents_and_target("flow", x0, noise, t)
    stepped = scheduler.step(target, scheduler.timesteps[i], noisy).prev_sample
    torch.testing.assert_close(stepped, noised_latents_and_target("flow", x0, noise, torch.full((2,), sigma_next))[0], rtol=1e-4, atol=1e-5)
    return noisy - t.reshape(-1, 1, 1, 1) * target, target


def test_a_step_on_a_fixed_batch_lowers_the_loss(trained, tmp_path):
    from baton_trainer.trainer import DiffusionTrainer

    trainer = DiffusionTrainer(finetune_config(trained, "step", output_dir=str(tmp_path / "out"), learning_rate=1e-2))
    feedback, pretrain = training_data(trainer)
    losses = []
    for _ in range(6):
        loss, _ = trainer.training_loss(feedback, pretrain, step=0, micro=0)  # the same batch, noise and timesteps
        losses.append(loss.item())
        trainer.accelerator.backward(loss)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
    assert losses[-1] < losses[0]


def zeroed_states(text, row, every_position_valid=False):
    """Row `row` of `text` with its states zeroed (and, where the model's training had no padding
    of a dropped caption, every position valid)."""
    tensors = {k: v[row : row + 1].clone() for k, v in text.tensors.items()}
    tensors["encoder_hidden_states"].zero_()
    if every_position_valid and "encoder_attention_mask" in tensors:
        tensors["encoder_attention_mask"].fill_(1)
    return TextConditioning(**tensors)


def test_a_dropped_caption_gets_the_null_conditioning_the_models_training_used(trained, tmp_path):
    from baton_trainer.trainer import DiffusionTrainer

    trainer = DiffusionTrainer(finetune_config(trained, "full", output_dir=str(tmp_path / "out"), cfg_dropout=0.5))
    model = trainer.backend
    assert type(model).cfg_dropout == trained.hooks.CFG_DROPOUT  # the rate its own training code uses
    text = model.encode_text(PROMPTS * 2, DURATION_S)
    dropped = torch.tensor([True, False, False, True])
    mixed = trainer.draw.drop_captions(text, dropped)
    latents = model.encode_audio(torch.randn(4, int(DURATION_S * model.sample_rate), generator=torch.Generator().manual_seed(0)))
    t = model.draw_timesteps(4, torch.Generator().manual_seed(1))
    noisy, _ = noised_latents_and_target(
        model.objective, latents, torch.randn(latents.shape, generator=torch.Generator().manual_seed(2)), t, model.noise_scheduler
    )

    def predict(cond, rows=slice(None)):
        with torch.no_grad():
            return model.predict(model.denoiser, noisy[rows], t[rows], cond)

    torch.testing.assert_close(predict(mixed)[~dropped], predict(text)[~dropped], rtol=1e-5, atol=1e-6)
    for row in (0, 3):
        reference = predict(trained.hooks.dropped_as_the_models_training_drops_it(model, text, row), slice(row, row + 1))
        torch.testing.assert_close(predict(mixed)[row : row + 1], reference, rtol=1e-4, atol=1e-5)
    assert (predict(mixed)[0] - predict(text)[0]).abs().max() > 1e-4  # dropping the caption changes the prediction


def latents_of(pipe):
    """Latents from the pipeline's own call, one caption at a time."""
    return plain_user.latents_of(pipe, PROMPTS, SEEDS, DURATION_S)


def test_a_resumed_lora_run_ends_where_an_uninterrupted_one_does(trained, tmp_path):
    from safetensors.torch import load_file

    from baton_trainer.trainer import DiffusionTrainer

    def run(out, steps, resume=None):
        config = finetune_config(trained, "lora", output_dir=str(out), max_train_steps=steps, checkpointing_steps=2, resume_from_checkpoint=resume)
        return train(DiffusionTrainer(config))

    whole = load_file(run(tmp_path / "whole", 4) / "pytorch_lora_weights.safetensors")
    run(tmp_path / "split", 2)
    resumed = load_file(run(tmp_path / "split", 4, resume="latest") / "pytorch_lora_weights.safetensors")
    assert whole.keys() == resumed.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=1e-5, atol=1e-6)


def test_bf16_autocast_trains_with_frozen_parts_in_bf16(trained, tmp_path, own_accelerator_state):
    from baton_trainer.trainer import DiffusionTrainer

    trainer = DiffusionTrainer(finetune_config(trained, "lora", output_dir=str(tmp_path / "bf16"), mixed_precision="bf16", max_train_steps=2))
    summary = json.loads((train(trainer) / "train_summary.json").read_text())
    assert np.isfinite(summary["final_loss"]) and all(p.dtype == torch.float32 for p in trainer.trainable_params)
    assert all(next(m.parameters()).dtype == torch.bfloat16 for m in trainer.backend.frozen_modules() if any(True for _ in m.parameters()))
