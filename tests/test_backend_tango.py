"""TANGO on the backend contract (`backend_contract.py`): DDPM with v-prediction, T5 conditioning."""

import torch
from backend_contract import *  # noqa: F403  the contract's tests and its `trained` fixture, run on this backend
from backend_contract import DURATION_S, PROMPTS, SEEDS, ddpm_sampler_inverts, latents_of, zeroed_states
from helpers import plain_diffusers_latents

from baton_trainer.backends import load_backend

BACKEND = "tango"
CFG_DROPOUT = 0.0  # TANGO's train.py drops captions only with --uncondition, off by default


def sampler_inverts(model, x0, noise, i):
    return ddpm_sampler_inverts(model, x0, noise, i)


def dropped_as_the_models_training_drops_it(model, text, row):
    """TANGO's train.py --uncondition: the T5 states zeroed, the mask kept."""
    return zeroed_states(text, row)


# The other backends' exports are loaded by plain diffusers in test_every_backend_from_the_cli.py
# (through their pushed cards); TANGO's loop is the default run's, so its exports are loaded here.
def test_exports_reload_the_diffusers_way_in_a_fresh_interpreter_and_reproduce_the_trainers_model(trained, tmp_path):
    model_class = type(load_backend(trained / "base"))
    name = model_class.denoiser_name
    assert (trained / "lora" / "pytorch_lora_weights.safetensors").is_file() and (trained / "full" / name).is_dir()
    theirs = plain_diffusers_latents(trained / "base", trained / "lora", trained / "full", tmp_path / "latents.npz", PROMPTS, SEEDS, DURATION_S)
    ours_lora = latents_of(model_class.from_pretrained(trained / "base", export=trained / "lora").pipe)
    torch.testing.assert_close(theirs["lora"], ours_lora.float(), rtol=1e-4, atol=1e-5)
    assert (latents_of(model_class.from_pretrained(trained / "base").pipe) - ours_lora).abs().max() > 1e-3  # the adapter does something
    ours_full = latents_of(model_class.from_pretrained(trained / "base", export=trained / "full").pipe)
    torch.testing.assert_close(theirs["full"], ours_full.float(), rtol=1e-4, atol=1e-5)
