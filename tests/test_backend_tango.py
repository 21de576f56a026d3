"""TANGO on the backend contract (`backend_contract.py`): DDPM with v-prediction, T5 conditioning."""

from backend_contract import *  # noqa: F403  the contract's tests and its `trained` fixture, run on this backend
from backend_contract import ddpm_sampler_inverts, zeroed_states

BACKEND = "tango"
CFG_DROPOUT = 0.0  # TANGO's train.py drops captions only with --uncondition, off by default


def sampler_inverts(model, x0, noise, i):
    return ddpm_sampler_inverts(model, x0, noise, i)


def dropped_as_the_models_training_drops_it(model, text, row):
    """TANGO's train.py --uncondition: the T5 states zeroed, the mask kept."""
    return zeroed_states(text, row)
