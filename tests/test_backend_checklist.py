"""The checklist every backend passes (docs/backends.md), on tiny pipelines of the real diffusers
and transformers classes: TANGO, AudioLDM 2, Stable Audio Open, Stable Audio 3 (rectified flow),
LongCat-AudioDiT (rectified flow run from noise to the clip) and ACE-Step (rectified flow on a shifted
grid, a learned null conditioning). `--model` picks the backend
from the folder; training, exports, generation, evaluation and the Space run unchanged on each."""

import json
import math
from pathlib import Path

import numpy as np
import plain_diffusers_user as plain_user
import pytest
import torch
from helpers import plain_diffusers_latents, save_preference, save_pretrain, train, training_data

from baton_trainer.backends import TextConditioning, load_backend
from baton_trainer.backends.ace_step import AceStepModel
from baton_trainer.backends.audioldm2 import AudioLDM2Model
from baton_trainer.backends.longcat_audio_dit import LongCatAudioDiTModel
from baton_trainer.backends.stable_audio import StableAudioModel
from baton_trainer.backends.stable_audio_3 import StableAudio3Model
from baton_trainer.backends.tango import TangoModel
from baton_trainer.losses import baton_loss, noised_latents_and_target
from baton_trainer.testing import (
    save_tiny_ace_step,
    save_tiny_audioldm2,
    save_tiny_longcat_audio_dit,
    save_tiny_stable_audio,
    save_tiny_stable_audio_3,
    save_tiny_tango,
)

PROMPTS = ["a dog barks then beep", "rain falls with hum"]
SEEDS = [3, 4]
DURATION_S = 0.32
BACKENDS = {
    "tango": (save_tiny_tango, TangoModel),
    "audioldm2": (save_tiny_audioldm2, AudioLDM2Model),
    "stable_audio": (save_tiny_stable_audio, StableAudioModel),
    "stable_audio_3": (save_tiny_stable_audio_3, StableAudio3Model),
    "longcat_audio_dit": (save_tiny_longcat_audio_dit, LongCatAudioDiTModel),
    "ace_step": (save_tiny_ace_step, AceStepModel),
}


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
    """The trained models' folder, knowing which backend it holds."""

    def __new__(cls, path, backend):
        self = super().__new__(cls, path)
        self.name_of_backend = backend
        return self


@pytest.fixture(scope="module", params=list(BACKENDS))
def trained(request, tmp_path_factory):
    """A tiny base model of one backend and, trained from it, a LoRA export and a full export."""
    from baton_trainer.trainer import DiffusionTrainer

    root = tmp_path_factory.mktemp(request.param)
    BACKENDS[request.param][0](root / "base")
    save_preference(root / "feedback", n=8)
    save_pretrain(root / "pretrain", n=8)
    for mode in ("lora", "full"):
        train(DiffusionTrainer(finetune_config(root, mode)))
    return BackendRoot(root, request.param)


def clips(model, prompts=PROMPTS, seeds=SEEDS):
    return model.generate(prompts, seeds, num_inference_steps=3, guidance_scale=3.0, duration_s=DURATION_S)


def test_model_flag_picks_the_backend_and_a_clip_depends_on_its_seed_only(trained):
    model = load_backend(trained / "base")
    assert type(model) is BACKENDS[trained.name_of_backend][1]
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
    scheduler; the loss at the exact target is zero."""
    model = load_backend(trained / "base")
    scheduler = model.pipe.scheduler
    longcat = isinstance(model, LongCatAudioDiTModel)
    if longcat:  # the pipeline's own grid: sigmas 1 -> 1/10, which its scheduler inverts (time runs from noise, 0, to the clip, 1)

        def restart():
            scheduler.set_timesteps(sigmas=torch.linspace(1.0, 0.1, 10).tolist())
            scheduler.set_begin_index(0)
    elif isinstance(model, AceStepModel):  # the pipeline's own shifted grid

        def restart():
            scheduler.set_timesteps(sigmas=model.pipe._get_timestep_schedule(10, shift=model.flow_shift).tolist())
    elif model.objective == "flow":  # the pipeline's own log-SNR schedule
        from diffusers.pipelines.stable_audio_3.pipeline_stable_audio_3 import logsnr_sigma_schedule

        def restart():
            scheduler.set_timesteps(sigmas=logsnr_sigma_schedule(10, -6.2, 2.0))
    else:

        def restart():
            scheduler.set_timesteps(10)

    restart()
    x0 = torch.randn(2, 4, 16, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    for i in range(0, 10, 3):
        if longcat:  # the trainer's flow time s is 1 - t, and the DiT predicts z0 - eps, the negated target
            time, time_next = (scheduler.sigmas[i : i + 2]).tolist()
            s_ = torch.full((2,), 1 - time)
            torch.testing.assert_close(model.denoiser_timestep(s_), torch.full((2,), float(scheduler.timesteps[i]) / scheduler.config.num_train_timesteps))
            noisy, target = noised_latents_and_target("flow", x0, noise, s_)
            stepped = scheduler.step(-target, scheduler.timesteps[i], noisy).prev_sample
            torch.testing.assert_close(stepped, noised_latents_and_target("flow", x0, noise, torch.full((2,), 1 - time_next))[0], rtol=1e-4, atol=1e-5)
            restart()
            recovered = noisy - s_.reshape(-1, 1, 1, 1) * target
        elif model.objective == "flow":  # an Euler step with the true velocity lands on the latent noised to the next sigma
            sigma, sigma_next = (scheduler.sigmas[i : i + 2]).tolist()
            t = torch.full((2,), sigma)
            torch.testing.assert_close(model.denoiser_timestep(t), torch.full((2,), float(scheduler.timesteps[i])))  # what the DiT is given
            noisy, target = noised_latents_and_target("flow", x0, noise, t)
            stepped = scheduler.step(target, scheduler.timesteps[i], noisy).prev_sample
            torch.testing.assert_close(stepped, noised_latents_and_target("flow", x0, noise, torch.full((2,), sigma_next))[0], rtol=1e-4, atol=1e-5)
            restart()  # each check walks from its own timestep
            recovered = noisy - t.reshape(-1, 1, 1, 1) * target
        elif model.objective == "ddpm":
            t = torch.full((2,), int(scheduler.timesteps[i]))
            noisy, target = noised_latents_and_target("ddpm", x0, noise, t, model.noise_scheduler)
            recovered = scheduler.step(target, int(t[0]), noisy).pred_original_sample
        else:  # the EDM-form sampler of Stable Audio: sample = x0 + sigma eps, t = atan(sigma) * 2 / pi
            sigma = scheduler.sigmas[i]
            t = torch.full((2,), float(scheduler.timesteps[i]))
            assert math.isclose(float(t[0]), math.atan(float(sigma)) * 2 / math.pi, rel_tol=1e-5)
            noisy, target = noised_latents_and_target(model.objective, x0, noise, t)
            sample = x0 + sigma * noise
            torch.testing.assert_close(scheduler.precondition_inputs(sample, sigma), noisy, rtol=1e-4, atol=1e-5)  # what the DiT sees
            recovered = scheduler.precondition_outputs(sample, target, sigma)
        torch.testing.assert_close(recovered, x0, rtol=1e-4, atol=1e-4)
        assert baton_loss(target, target, torch.ones(2))[0].item() == 0.0


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


def dropped_as_the_models_training_drops_it(name, model, text, row):
    """Row `row` of `text` as each model's own training code replaces a dropped caption."""
    tensors = {k: v[row : row + 1].clone() for k, v in text.tensors.items()}
    if name in ("tango", "longcat_audio_dit"):  # TANGO's train.py --uncondition, LongCat's pipeline: the states zeroed, the mask kept
        tensors["encoder_hidden_states"].zero_()
    elif name == "audioldm2":  # the empty caption through the pipeline's own encoders, padded to the batch (masked)
        embeds, mask, generated = model.pipe.encode_prompt([""], "cpu", 1, False)
        pad = tensors["encoder_hidden_states_1"].shape[1] - embeds.shape[1]
        return TextConditioning(
            encoder_hidden_states=generated,
            encoder_hidden_states_1=torch.nn.functional.pad(embeds, (0, 0, 0, pad)),
            encoder_attention_mask_1=torch.nn.functional.pad(mask.bool(), (0, pad)),
        )
    elif name == "ace_step":  # ACE-Step's cfg_ratio: the whole conditioning the learned null embedding
        tensors["encoder_hidden_states"] = model.pipe.condition_encoder.null_condition_emb.expand_as(tensors["encoder_hidden_states"]).clone()
    else:  # stable-audio-tools' cfg_dropout_prob: the whole cross-attention context zeroed
        tensors["encoder_hidden_states"].zero_()
        if "encoder_attention_mask" in tensors:
            tensors["encoder_attention_mask"].fill_(1)
    return TextConditioning(**tensors)


def test_a_dropped_caption_gets_the_null_conditioning_the_models_training_used(trained, tmp_path):
    from baton_trainer.trainer import DiffusionTrainer

    trainer = DiffusionTrainer(finetune_config(trained, "full", output_dir=str(tmp_path / "out"), cfg_dropout=0.5))
    model = trainer.backend
    assert 0 <= type(model).cfg_dropout < 1 and (type(model).cfg_dropout > 0) == (trained.name_of_backend != "tango")
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
        reference = predict(dropped_as_the_models_training_drops_it(trained.name_of_backend, model, text, row), slice(row, row + 1))
        torch.testing.assert_close(predict(mixed)[row : row + 1], reference, rtol=1e-4, atol=1e-5)
    assert (predict(mixed)[0] - predict(text)[0]).abs().max() > 1e-4  # dropping the caption changes the prediction


def latents_of(pipe):
    """Latents from the pipeline's own call, one caption at a time."""
    return plain_user.latents_of(pipe, PROMPTS, SEEDS, DURATION_S)


def test_exports_reload_the_diffusers_way_in_a_fresh_interpreter_and_reproduce_the_trainers_model(trained, tmp_path):
    model_class = BACKENDS[trained.name_of_backend][1]
    name = model_class.denoiser_name
    assert (trained / "lora" / "pytorch_lora_weights.safetensors").is_file() and (trained / "full" / name).is_dir()
    theirs = plain_diffusers_latents(trained / "base", trained / "lora", trained / "full", tmp_path / "latents.npz", PROMPTS, SEEDS, DURATION_S)
    ours_lora = latents_of(model_class.from_pretrained(trained / "base", export=trained / "lora").pipe)
    torch.testing.assert_close(theirs["lora"], ours_lora.float(), rtol=1e-4, atol=1e-5)
    assert (latents_of(model_class.from_pretrained(trained / "base").pipe) - ours_lora).abs().max() > 1e-3  # the adapter does something
    ours_full = latents_of(model_class.from_pretrained(trained / "base", export=trained / "full").pipe)
    torch.testing.assert_close(theirs["full"], ours_full.float(), rtol=1e-4, atol=1e-5)


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


def test_audioldm2_clips_are_what_diffusers_pipeline_makes_from_each_caption(tmp_path):
    """AudioLDM 2's backend encodes each caption alone (diffusers' batch padding would make a clip
    depend on its neighbours): clip i is what `pipe(caption_i, generator=g_i)` makes."""
    folder = save_tiny_audioldm2(tmp_path / "audioldm2")
    model = load_backend(folder)
    both = clips(model)
    pipe = plain_user.plain_pipeline(folder)
    for i in range(2):
        ref = pipe(
            PROMPTS[i], num_inference_steps=3, guidance_scale=3.0, audio_length_in_s=DURATION_S, generator=[torch.Generator().manual_seed(SEEDS[i])]
        ).audios[0]
        np.testing.assert_allclose(both[i], ref, rtol=0, atol=1e-4 * np.abs(both).max())
    cond = model.encode_text(PROMPTS)
    embeds, mask, generated = model.pipe.encode_prompt(PROMPTS[:1], "cpu", 1, False)
    torch.testing.assert_close(cond.tensors["encoder_hidden_states"][:1], generated)
    torch.testing.assert_close(cond.tensors["encoder_hidden_states_1"][:1, : int(mask.sum())], embeds)


def test_stable_audio_trains_on_the_whole_window_conditioned_on_the_clip_length(tmp_path):
    model = load_backend(save_tiny_stable_audio(tmp_path / "sao"))
    wav = torch.randn(1, int(DURATION_S * model.sample_rate))
    latents = model.encode_audio(wav)
    assert latents.shape[-1] == model.pipe.transformer.config.sample_size  # padded to the window, as generation uses it
    short, long = model.encode_text(PROMPTS[:1], DURATION_S), model.encode_text(PROMPTS[:1], model.duration_s)
    assert not torch.equal(short.tensors["global_hidden_states"], long.tensors["global_hidden_states"])  # seconds_total differs
    with pytest.raises(ValueError, match="own scheduler"):
        model.generate(PROMPTS[:1], [0], num_inference_steps=2, guidance_scale=3.0, sampler="ddim")
