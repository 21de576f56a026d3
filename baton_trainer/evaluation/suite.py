"""All metrics for several models' clips of the same captions, in one call.

`compute_metrics` returns what `write_report` takes: per-model metrics, per-caption CLAP scores,
and the metrics that could not be computed with the reason (a checkpoint not given or not found,
no reference audio, too few clips). It never fails for a missing optional input; it does fail for
inconsistent inputs (clip counts, names).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import numpy as np

from .metrics import MetricInputError, _as_embedder, clap_score, frechet_distance_from_embeddings, inception_score, kl_divergence
from .models import PANNS_CNN14_16K_FILE, PANNS_CNN14_16K_URL, VGGISH_FILE, VGGISH_URL, MissingCheckpointError, PannsCnn14, VGGish


@dataclasses.dataclass
class EvaluationResult:
    metrics: dict[str, dict[str, float]]  # model name -> metric key -> value
    per_caption: list[dict[str, Any]]  # caption_id, caption, then CLAP score per model name
    skipped: dict[str, str]  # metric key -> reason
    info: dict[str, Any]
    # Set-level metrics' inputs, for their bootstrap intervals: metric key -> model (or "reference") -> per-clip rows.
    embeddings: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # Per-clip values of metrics that are means over clips (beyond the CLAP score), for their intervals:
    # model -> metric key -> one value per caption row (NaN where the clip has no value, e.g. no KL pair).
    per_clip: dict[str, dict[str, list[float]]] = dataclasses.field(default_factory=dict)


def _load(model: Any, cls: type, device: Any) -> Any:
    if model is None or isinstance(model, cls):
        return model
    return cls.from_checkpoint(model, device=device)


def compute_metrics(
    captions: Sequence[str],
    generated: Mapping[str, Sequence[np.ndarray]],
    sample_rate: int,
    *,
    caption_ids: Sequence[int] | None = None,
    clap: Any = None,
    panns: PannsCnn14 | str | os.PathLike | None = None,
    vggish: VGGish | str | os.PathLike | None = None,
    reference: Mapping[str, np.ndarray] | None = None,
    reference_sample_rate: int | None = None,
    names: Sequence[str] | None = None,
    is_splits: int = 10,
    device: Any = None,
) -> EvaluationResult:
    """Score each model's clips (`generated[model][i]` is the clip for `captions[i]`).

    - `clap`: a `ClapEmbedder`, folder or Hub id -> `clap_score` (None: skipped).
    - `panns`: a loaded `PannsCnn14` or the path of `Cnn14_16k_mAP=0.438.pth` -> `is`, and with
      `reference` also `fd` and `kl`.
    - `vggish`: a loaded `VGGish` or the path of `vggish-10086976.pth` -> with `reference`, `fad`.
    - `reference`: reference clip name -> waveform (e.g. AudioCaps test clips); `names[i]` names
      the reference of caption i (`load_test_captions()[i]["reference"]`). KL uses the pairs whose
      reference exists; FD and FAD use all reference clips given.
    """
    captions = list(captions)
    if not generated:
        raise MetricInputError("compute_metrics: no models' clips given")
    for model_name, clips in generated.items():
        if len(clips) != len(captions):
            raise MetricInputError(f"generated[{model_name!r}] has {len(clips)} clips for {len(captions)} captions")
    if caption_ids is not None and len(caption_ids) != len(captions):
        raise MetricInputError(f"caption_ids has {len(caption_ids)} entries for {len(captions)} captions")
    if names is not None and len(names) != len(captions):
        raise MetricInputError(f"names has {len(names)} entries for {len(captions)} captions")
    if reference is not None and names is None:
        raise MetricInputError("compute_metrics: reference audio needs `names` (the reference clip of each caption)")

    metrics: dict[str, dict[str, float]] = {name: {} for name in generated}
    skipped: dict[str, str] = {}
    info: dict[str, Any] = {"captions": len(captions), "models": list(generated)}
    ids = list(caption_ids) if caption_ids is not None else list(range(len(captions)))
    per_caption: list[dict[str, Any]] = [{"caption_id": int(i), "caption": c} for i, c in zip(ids, captions)]
    embeddings: dict[str, dict[str, Any]] = {}
    per_clip: dict[str, dict[str, list[float]]] = {name: {} for name in generated}

    if clap is None:
        skipped["clap_score"] = "no CLAP model given (e.g. laion/clap-htsat-unfused)"
    else:
        clap = _as_embedder(clap)
        embeddings["clap_audio"] = {m: clap.embed_audio(clips, sample_rate).cpu().numpy() for m, clips in generated.items()}
        for model_name, clips in generated.items():
            mean, per_pair = clap_score(captions, clips, sample_rate, model=clap, audio_embeddings=embeddings["clap_audio"][model_name])
            metrics[model_name]["clap_score"] = mean
            for row, score in zip(per_caption, per_pair):
                row[model_name] = float(score)

    no_reference = "no reference audio given (the AudioCaps test clips named by load_test_captions()['reference'])"
    try:
        panns_model = _load(panns, PannsCnn14, device)
        if panns_model is None:
            raise MissingCheckpointError(f"no PANNs checkpoint given: FD, KL and IS need {PANNS_CNN14_16K_FILE} from {PANNS_CNN14_16K_URL}")
    except MissingCheckpointError as exc:
        for key in ("fd", "kl", "is"):
            skipped[key] = str(exc)
        panns_model = None
    if panns_model is not None:
        outputs = {m: panns_model.embed(clips, sample_rate) for m, clips in generated.items()}
        embeddings["is"] = {m: logits for m, (_, logits) in outputs.items()}
        for model_name, (_, logits) in outputs.items():
            if len(captions) < is_splits:
                skipped["is"] = f"needs at least {is_splits} clips per model ({is_splits} splits), got {len(captions)}"
                break
            metrics[model_name]["is"], metrics[model_name]["is_std"] = inception_score(logits, splits=is_splits, from_logits=True)
        if reference is None:
            skipped["fd"] = skipped["kl"] = no_reference
        else:
            ref_names = list(reference)
            ref_emb, ref_logits = panns_model.embed([reference[n] for n in ref_names], reference_sample_rate or sample_rate)
            paired = [i for i, n in enumerate(names) if n in reference]  # type: ignore[arg-type]
            info["kl_pairs"] = len(paired)
            embeddings["fd"] = {**{m: emb for m, (emb, _) in outputs.items()}, "reference": ref_emb}
            for model_name, (emb, logits) in outputs.items():
                metrics[model_name]["fd"] = frechet_distance_from_embeddings(emb, ref_emb)
                if paired:
                    ref_index = {n: j for j, n in enumerate(ref_names)}
                    rows = [ref_index[names[i]] for i in paired]  # type: ignore[index]
                    metrics[model_name]["kl"], per_pair = kl_divergence(ref_logits[rows], logits[paired], return_per_pair=True)
                    values = [float("nan")] * len(captions)
                    for i, value in zip(paired, per_pair):
                        values[i] = float(value)
                    per_clip[model_name]["kl"] = values
            if not paired:
                skipped["kl"] = "no generated clip's name matches a reference clip"

    try:
        vggish_model = _load(vggish, VGGish, device)
        if vggish_model is None:
            raise MissingCheckpointError(f"no VGGish checkpoint given: FAD needs {VGGISH_FILE} from {VGGISH_URL}")
    except MissingCheckpointError as exc:
        skipped["fad"] = str(exc)
        vggish_model = None
    if vggish_model is not None:
        if reference is None:
            skipped["fad"] = no_reference
        else:
            ref_frames = vggish_model.embed(list(reference.values()), reference_sample_rate or sample_rate)
            embeddings["fad"] = {"reference": ref_frames}
            for model_name, clips in generated.items():
                embeddings["fad"][model_name] = vggish_model.embed(clips, sample_rate)
                metrics[model_name]["fad"] = frechet_distance_from_embeddings(embeddings["fad"][model_name], ref_frames)
    if reference is not None:
        info["reference_clips"] = len(reference)
    return EvaluationResult(metrics=metrics, per_caption=per_caption, skipped=skipped, info=info, embeddings=embeddings, per_clip=per_clip)
