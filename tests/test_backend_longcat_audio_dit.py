"""LongCat-AudioDiT on the backend contract (`backend_contract.py`): rectified flow run from noise
(t = 0) to the clip (t = 1), the DiT predicting z0 - eps."""

import torch
from backend_contract import *  # noqa: F403  the contract's tests and its `trained` fixture, run on this backend
from backend_contract import zeroed_states

from baton_trainer.losses import noised_latents_and_target

BACKEND = "longcat_audio_dit"
CFG_DROPOUT = 0.1  # not in diffusers: as the other DiTs here, with the pipeline's unconditional input


def sampler_inverts(model, x0, noise, i):
    """The pipeline's grid, sigmas 1 -> 1/10, which its scheduler inverts: the trainer's flow time s
    is 1 - t, and the DiT predicts z0 - eps, the negated target."""
    scheduler = model.pipe.scheduler
    scheduler.set_timesteps(sigmas=torch.linspace(1.0, 0.1, 10).tolist())
    scheduler.set_begin_index(0)
    time, time_next = (scheduler.sigmas[i : i + 2]).tolist()
    s = torch.full((2,), 1 - time)
    torch.testing.assert_close(model.denoiser_timestep(s), torch.full((2,), float(scheduler.timesteps[i]) / scheduler.config.num_train_timesteps))
    noisy, target = noised_latents_and_target("flow", x0, noise, s)
    stepped = scheduler.step(-target, scheduler.timesteps[i], noisy).prev_sample
    torch.testing.assert_close(stepped, noised_latents_and_target("flow", x0, noise, torch.full((2,), 1 - time_next))[0], rtol=1e-4, atol=1e-5)
    return noisy - s.reshape(-1, 1, 1, 1) * target, target


def dropped_as_the_models_training_drops_it(model, text, row):
    """The pipeline's unconditional input: the caption's states zeroed, the mask kept."""
    return zeroed_states(text, row)
