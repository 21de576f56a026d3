"""Stable Audio Open on the backend contract (`backend_contract.py`): the cosine v objective sampled
by an EDM-form DPM-Solver, a fixed window conditioned on the clip length."""

import math

import pytest
import torch
from backend_contract import *  # noqa: F403  the contract's tests and its `trained` fixture, run on this backend
from backend_contract import DURATION_S, PROMPTS, zeroed_states

from baton_trainer.backends import load_backend
from baton_trainer.losses import noised_latents_and_target
from baton_trainer.testing import save_tiny_stable_audio

BACKEND = "stable_audio"
CFG_DROPOUT = 0.1  # stable-audio-tools' cfg_dropout_prob


def sampler_inverts(model, x0, noise, i):
    """The EDM-form sampler: sample = x0 + sigma eps, t = atan(sigma) * 2 / pi; its preconditioning
    gives the DiT the trainer's noised latent and returns x0 from the true target."""
    scheduler = model.pipe.scheduler
    scheduler.set_timesteps(10)
    sigma = scheduler.sigmas[i]
    t = torch.full((2,), float(scheduler.timesteps[i]))
    assert math.isclose(float(t[0]), math.atan(float(sigma)) * 2 / math.pi, rel_tol=1e-5)
    noisy, target = noised_latents_and_target(model.objective, x0, noise, t)
    sample = x0 + sigma * noise
    torch.testing.assert_close(scheduler.precondition_inputs(sample, sigma), noisy, rtol=1e-4, atol=1e-5)  # what the DiT sees
    return scheduler.precondition_outputs(sample, target, sigma), target


def dropped_as_the_models_training_drops_it(model, text, row):
    """stable-audio-tools' cfg_dropout_prob: the whole cross-attention context zeroed."""
    return zeroed_states(text, row, every_position_valid=True)


def test_stable_audio_trains_on_the_whole_window_conditioned_on_the_clip_length(tmp_path):
    model = load_backend(save_tiny_stable_audio(tmp_path / "sao"))
    wav = torch.randn(1, int(DURATION_S * model.sample_rate))
    latents = model.encode_audio(wav)
    assert latents.shape[-1] == model.pipe.transformer.config.sample_size  # padded to the window, as generation uses it
    short, long = model.encode_text(PROMPTS[:1], DURATION_S), model.encode_text(PROMPTS[:1], model.duration_s)
    assert not torch.equal(short.tensors["global_hidden_states"], long.tensors["global_hidden_states"])  # seconds_total differs
    with pytest.raises(ValueError, match="own scheduler"):
        model.generate(PROMPTS[:1], [0], num_inference_steps=2, guidance_scale=3.0, sampler="ddim")
