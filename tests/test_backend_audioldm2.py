"""AudioLDM 2 on the backend contract (`backend_contract.py`): DDPM with epsilon prediction, CLAP +
Flan-T5 -> GPT-2 conditioning."""

import numpy as np
import plain_diffusers_user as plain_user
import torch
from backend_contract import *  # noqa: F403  the contract's tests and its `trained` fixture, run on this backend
from backend_contract import DURATION_S, PROMPTS, SEEDS, clips, ddpm_sampler_inverts

from baton_trainer.backends import TextConditioning, load_backend
from baton_trainer.testing import save_tiny_audioldm2

BACKEND = "audioldm2"
CFG_DROPOUT = 0.1  # AudioLDM's training configs, unconditional_prob_cfg


def sampler_inverts(model, x0, noise, i):
    return ddpm_sampler_inverts(model, x0, noise, i)


def dropped_as_the_models_training_drops_it(model, text, row):
    """The empty caption through the pipeline's own encoders, padded to the batch (masked)."""
    embeds, mask, generated = model.pipe.encode_prompt([""], "cpu", 1, False)
    pad = text.tensors["encoder_hidden_states_1"].shape[1] - embeds.shape[1]
    return TextConditioning(
        encoder_hidden_states=generated,
        encoder_hidden_states_1=torch.nn.functional.pad(embeds, (0, 0, 0, pad)),
        encoder_attention_mask_1=torch.nn.functional.pad(mask.bool(), (0, pad)),
    )


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
