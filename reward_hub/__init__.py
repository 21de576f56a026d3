"""BATON reward model: frozen CLAP + a small head, shared on the Hub with a custom pipeline.

    import reward_hub
    model = reward_hub.load("RUN/reward_model")          # no remote code needed
    model.score(["a dog barks then a bell rings"], [wav], sampling_rate=16000)

    from transformers import pipeline                      # only transformers (and soxr) needed
    pipe = pipeline("text-audio-reward", model="RUN/reward_model", trust_remote_code=True)

This package is what a Hub user needs and nothing else: it imports torch, numpy, soxr and
transformers only, never `baton_trainer` (training and labelling are baton_trainer's stages).
"""

from __future__ import annotations

import os

import torch
from transformers import AutoConfig, AutoModel, ClapModel, ClapProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .modeling_baton_reward import (
    CLAP_SAMPLE_RATE,
    HEAD_TYPES,
    PIPELINE_TASK,
    BatonRewardConfig,
    BatonRewardModel,
    BatonRewardOutput,
    RewardInputError,
    prepare_waveform,
)
from .pipeline_baton_reward import TextAudioRewardPipeline

AutoConfig.register(BatonRewardConfig.model_type, BatonRewardConfig, exist_ok=True)
AutoModel.register(BatonRewardConfig, BatonRewardModel, exist_ok=True)
PIPELINE_REGISTRY.register_pipeline(PIPELINE_TASK, pipeline_class=TextAudioRewardPipeline, pt_model=AutoModel, type="multimodal")


def build_reward_model(
    clap: str | os.PathLike | ClapModel = "laion/clap-htsat-unfused",
    head_hidden_size: int = 512,
    seed: int = 0,
    head_type: str = "mlp",
    processor: ClapProcessor | None = None,
) -> BatonRewardModel:
    """A fresh reward model around a CLAP checkpoint (Hub id, folder, or a loaded `ClapModel` with
    its `processor`): CLAP weights copied in and frozen, head (`head_type` "mlp" or
    "cosine_logistic") initialised from `seed`, processor attached."""
    if isinstance(clap, ClapModel):
        clap_model, source = clap, clap.name_or_path
        if processor is None:
            if not source:
                raise ValueError("build_reward_model: a ClapModel built in memory needs an explicit `processor`")
            processor = ClapProcessor.from_pretrained(source)
    else:
        source = str(clap)
        clap_model, processor = ClapModel.from_pretrained(source), processor or ClapProcessor.from_pretrained(source)
    config = BatonRewardConfig(
        clap_config=clap_model.config.to_dict(),
        clap_model_name_or_path=source,
        head_hidden_size=head_hidden_size,
        head_type=head_type,
    )
    torch.manual_seed(seed)
    model = BatonRewardModel(config)
    model.clap.load_state_dict(clap_model.state_dict())
    model.processor = processor
    return model.eval()


def load(path_or_repo: str | os.PathLike, device: str | torch.device | None = None, **kwargs) -> BatonRewardModel:
    """Load a saved reward model (folder or Hub repo) with the CLAP processor attached, in eval
    mode. Uses the classes in this package, so no remote code runs."""
    source = str(path_or_repo)
    if not os.path.exists(source) and (os.path.isabs(source) or source.startswith(".") or source.count("/") > 1):
        # A path, not a Hub id ("name" or "owner/name"): say it is missing rather than what a Hub id must look like.
        raise ValueError(f"{source}: cannot be loaded as a BATON reward model (no such folder; train one with the reward stage)")
    try:
        model = BatonRewardModel.from_pretrained(source, **kwargs)
        model.processor = ClapProcessor.from_pretrained(
            source, **{k: v for k, v in kwargs.items() if k in ("revision", "token", "cache_dir", "local_files_only")}
        )
    except Exception as exc:  # a missing or malformed folder: one line naming it, not the library's traceback
        reason = (str(exc).splitlines() or [""])[0]
        raise ValueError(f"{source}: cannot be loaded as a BATON reward model ({type(exc).__name__}: {reason})") from None
    if device is not None:
        model.to(device)
    return model.eval()


__all__ = [
    "CLAP_SAMPLE_RATE",
    "HEAD_TYPES",
    "BatonRewardConfig",
    "BatonRewardModel",
    "BatonRewardOutput",
    "RewardInputError",
    "TextAudioRewardPipeline",
    "build_reward_model",
    "load",
    "prepare_waveform",
]
