"""What a diffusers user does with this project's exports, with torch, diffusers, transformers and
peft only: load the base pipeline with diffusers' own class, put the LoRA adapter on with the
pipeline's loader (or the peft lines of docs/backends.md where it has none) or the full denoiser in
with `from_pretrained`, and sample. The checklist runs it in a fresh interpreter where this package
cannot be imported, and imports its functions for in-process checks.

    python tests/plain_diffusers_user.py BASE LORA FULL OUT.npz PROMPTS_JSON SEEDS_JSON SECONDS
    python tests/plain_diffusers_user.py --cards LORA_README FULL_README OUT.npz PROMPTS_JSON SEEDS_JSON SECONDS

With `--cards`, it runs the "With diffusers alone" lines of each pushed model's card as they stand
(a `file://` repo is a folder, fetched by path where the lines download) and samples the `pipe` they make.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch


def plain_pipeline(folder, **components):
    """The base pipeline as a diffusers user loads it: diffusers' class, or the one the folder carries
    as remote code (TANGO's), never this project's."""
    import diffusers

    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    if isinstance(index["_class_name"], list):  # a pipeline file in the folder (TANGO)
        return diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True, **components)
    if index.get("language_model", [None, None])[1] == "GPT2Model":  # AudioLDM 2's published layout (docs/backends.md)
        from transformers import GPT2LMHeadModel

        components["language_model"] = GPT2LMHeadModel.from_pretrained(folder / "language_model")
    return getattr(diffusers, index["_class_name"]).from_pretrained(folder, **components)


def load_lora_the_diffusers_way(pipe, export):
    """`pipe.load_lora_weights` where the pipeline has it; otherwise the peft lines of docs/backends.md."""
    if hasattr(pipe, "load_lora_weights"):
        pipe.load_lora_weights(export)
        return
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors import safe_open

    name = "transformer" if hasattr(pipe, "transformer") else "unet"
    with safe_open(str(Path(export) / "pytorch_lora_weights.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
        state = {k.removeprefix(f"{name}."): f.get_tensor(k) for k in f.keys()}
    denoiser = getattr(pipe, name)
    inject_adapter_in_model(LoraConfig(r=meta[f"{name}.r"], lora_alpha=meta[f"{name}.lora_alpha"], target_modules=meta[f"{name}.target_modules"]), denoiser)
    set_peft_model_state_dict(denoiser, convert_unet_state_dict_to_peft(state))


def latents_of(pipe, prompts, seeds, seconds):
    """Latents from the pipeline's own call, one caption at a time, each from its seed."""
    import inspect

    parameters = inspect.signature(pipe.__call__).parameters
    length = next(name for name in ("audio_end_in_s", "audio_length_in_s", "duration", "audio_duration_s", "audio_duration") if name in parameters)
    return torch.cat(
        [
            torch.as_tensor(
                pipe(
                    p, num_inference_steps=3, guidance_scale=2.0, generator=[torch.Generator().manual_seed(s)], output_type="latent", **{length: seconds}
                ).audios
            )
            for p, s in zip(prompts, seeds)
        ]
    )


def pipe_from_card(card: str):
    """The pipeline the card's "With diffusers alone" Python lines make."""
    import os

    import huggingface_hub

    code = card.split("With diffusers alone", 1)[1].split("```python\n", 1)[1].split("```", 1)[0].replace("file://", "")
    huggingface_hub.hf_hub_download = lambda repo_id, filename: os.path.join(repo_id, filename)  # the repo is a local folder here
    scope: dict = {}
    exec(code, scope)
    return scope["pipe"]


if __name__ == "__main__":
    sys.modules["baton_trainer"] = None  # this package is not there: only torch, diffusers, transformers and peft
    sys.modules["reward_hub"] = None
    if sys.argv[1] == "--cards":
        lora_card, full_card, out, prompts, seeds, seconds = sys.argv[2:8]
        made = {}
        for name, card in (("lora", lora_card), ("full", full_card)):
            pipe = pipe_from_card(Path(card).read_text())
            pipe.set_progress_bar_config(disable=True)
            made[name] = latents_of(pipe, json.loads(prompts), json.loads(seeds), float(seconds)).float().numpy()
        np.savez(out, **made)
        sys.exit(0)
    base, lora, full, out, prompts, seeds, seconds = sys.argv[1:8]
    prompts, seeds, seconds = json.loads(prompts), json.loads(seeds), float(seconds)
    pipe = plain_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    name = "transformer" if hasattr(pipe, "transformer") else "unet"
    denoiser = type(getattr(pipe, name)).from_pretrained(full, subfolder=name)  # the full export, loaded before the adapter touches the class
    load_lora_the_diffusers_way(pipe, lora)
    with_lora = latents_of(pipe, prompts, seeds, seconds)
    full_pipe = plain_pipeline(base, **{name: denoiser})
    full_pipe.set_progress_bar_config(disable=True)
    np.savez(out, lora=with_lora.float().numpy(), full=latents_of(full_pipe, prompts, seeds, seconds).float().numpy())
    print(type(pipe).__module__, type(pipe).__name__)
