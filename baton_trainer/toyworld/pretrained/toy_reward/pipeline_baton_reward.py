"""The `text-audio-reward` pipeline: score (caption, clip) pairs with a BATON reward model.

    from transformers import pipeline
    scorer = pipeline("text-audio-reward", model="user/baton-reward", trust_remote_code=True)
    scorer({"caption": "a dog barks then a car passes", "audio": waveform, "sampling_rate": 16000})
    # -> {"score": 0.83}

Saved next to the model weights as Hub remote code: imports only transformers, torch, numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers import Pipeline

from .modeling_baton_reward import CLAP_SAMPLE_RATE, RewardInputError, fast_clap_features, prepare_waveform


def _read_audio_file(path: str) -> tuple[np.ndarray, int]:
    try:
        import soundfile
    except ImportError:
        raise RewardInputError(f"{path}: reading audio files needs soundfile; pass a waveform array instead") from None
    wav, sr = soundfile.read(path, dtype="float32", always_2d=True)
    return wav.mean(axis=1), sr


class TextAudioRewardPipeline(Pipeline):
    """Inputs: a dict {"caption", "audio", "sampling_rate"} (or a list of them), where `audio` is a
    mono float array, a datasets-style {"array", "sampling_rate"} dict, or a file path. Output:
    {"score": float in [0, 1]} per input. Clips are resampled to 48 kHz and cut/padded to the
    model's clip length (10 s) from the start, so a clip always gets the same score."""

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = True
    _load_tokenizer = True

    def _sanitize_parameters(self, caption=None, sampling_rate=None, **kwargs):
        preprocess = {}
        if caption is not None:
            preprocess["caption"] = caption
        if sampling_rate is not None:
            preprocess["sampling_rate"] = sampling_rate
        return preprocess, {}, {}

    def preprocess(self, inputs: Any, caption: str | None = None, sampling_rate: int | None = None):
        if isinstance(inputs, dict) and "caption" in inputs:
            caption = inputs["caption"]
            audio = inputs.get("audio")
            sampling_rate = inputs.get("sampling_rate", sampling_rate)
        else:
            audio = inputs
        if isinstance(audio, dict):
            sampling_rate = audio.get("sampling_rate", sampling_rate)
            audio = audio.get("array")
        if isinstance(audio, str):
            audio, sampling_rate = _read_audio_file(audio)
        if audio is None:
            raise RewardInputError("text-audio-reward: each input needs 'audio'")
        if not isinstance(caption, str) or not caption.strip():
            raise RewardInputError(f"text-audio-reward: each input needs a non-empty 'caption', got {caption!r}")
        if sampling_rate is None:
            raise RewardInputError("text-audio-reward: 'sampling_rate' is required with a raw waveform")
        clip = prepare_waveform(audio, sampling_rate, self.model.config.clip_samples)
        text = self.tokenizer([caption], padding=True, truncation=True, return_tensors="pt")
        features = fast_clap_features(self.feature_extractor)([clip], sampling_rate=CLAP_SAMPLE_RATE, return_tensors="pt")
        model_inputs = {"input_ids": text["input_ids"], "attention_mask": text["attention_mask"]}
        model_inputs["input_features"] = features["input_features"]
        if "is_longer" in features:
            model_inputs["is_longer"] = features["is_longer"]
        return model_inputs

    def _forward(self, model_inputs):
        return {"rewards": self.model(**model_inputs).rewards}

    def postprocess(self, model_outputs):
        return {"score": float(model_outputs["rewards"].reshape(-1)[0])}
