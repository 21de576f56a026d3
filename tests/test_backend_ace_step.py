"""ACE-Step 1.5 on the backend contract (`backend_contract.py`): rectified flow on the pipeline's
shift-3 Euler grid, the condition encoder's learned null conditioning."""

from backend_contract import *  # noqa: F403  the contract's tests and its `trained` fixture, run on this backend
from backend_contract import flow_sampler_inverts

from baton_trainer.backends import TextConditioning

BACKEND = "ace_step"
CFG_DROPOUT = 0.15  # ACE-Step 1.5's cfg_ratio


def sampler_inverts(model, x0, noise, i):
    return flow_sampler_inverts(model, x0, noise, i, model.pipe._get_timestep_schedule(10, shift=model.flow_shift).tolist())


def dropped_as_the_models_training_drops_it(model, text, row):
    """ACE-Step's training: the whole conditioning replaced by the learned null_condition_emb."""
    states = text.tensors["encoder_hidden_states"][row : row + 1]
    null = model.pipe.condition_encoder.null_condition_emb.expand_as(states).clone()
    return TextConditioning(encoder_hidden_states=null, encoder_attention_mask=text.tensors["encoder_attention_mask"][row : row + 1])
