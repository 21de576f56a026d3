"""Stable Audio 3 on the backend contract (`backend_contract.py`): rectified flow on the pipeline's
log-SNR Euler grid, T5Gemma conditioning with the duration token."""

from backend_contract import *  # noqa: F403  the contract's tests and its `trained` fixture, run on this backend
from backend_contract import flow_sampler_inverts, zeroed_states

BACKEND = "stable_audio_3"
CFG_DROPOUT = 0.1  # stable-audio-tools' cfg_dropout_prob


def sampler_inverts(model, x0, noise, i):
    from diffusers.pipelines.stable_audio_3.pipeline_stable_audio_3 import logsnr_sigma_schedule  # lazy: recent diffusers only

    return flow_sampler_inverts(model, x0, noise, i, logsnr_sigma_schedule(10, -6.2, 2.0))


def dropped_as_the_models_training_drops_it(model, text, row):
    """stable-audio-tools' cfg_dropout_prob: the whole cross-attention context zeroed, every position valid."""
    return zeroed_states(text, row, every_position_valid=True)
