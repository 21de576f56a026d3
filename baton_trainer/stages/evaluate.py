"""The `evaluate` stage: the same captions and seeds through the base and the aligned model, the
paper's metrics for both, and a report.

    python -m baton_trainer evaluate --run_dir RUN --model declare-lab/tango-full-ft-audiocaps [--aligned RUN/aligned]

    captions -> RUN/eval/clips/base/, RUN/eval/clips/aligned/ (generate stage, resumable)
             -> metrics (CLAP score, FD, FAD, KL, IS; oracle accuracies in the toy world)
             -> RUN/eval/report.md, metrics.json, *.png

Imports inside the functions keep `python -m baton_trainer --help` fast: the CLI imports every
stage module at start.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..layout import RunLayout
from .generate import GenerateConfig, generate


@dataclass
class EvaluateConfig:
    run_dir: str = field(default="run", metadata={"help": "run folder: writes RUN/eval/"})
    model: str = field(default="declare-lab/tango-full-ft-audiocaps", metadata={"help": "base model (folder or Hub id)"})
    aligned: str | None = field(
        default=None, metadata={"help": "aligned export, a folder or Hub id (default RUN/aligned); 'none' evaluates the base only", "none_turns_off": True}
    )
    reward_model: str | None = field(default=None, metadata={"help": "the run's reward model, whose accuracy the report shows (default RUN/reward_model)"})
    captions: str = field(
        default="paper",
        metadata={"help": "'paper' (the 148 + 165 AudioCaps test captions), 'heldout' (RUN/captions.jsonl held-out split), or a captions file"},
    )
    out_dir: str | None = field(default=None, metadata={"help": "default RUN/eval"})
    clips_per_caption: int = field(default=1, metadata={"help": "clips per caption and model"})
    num_inference_steps: int = field(default=200, metadata={"help": "sampling steps (paper: 200)"})
    guidance_scale: float = field(default=3.0, metadata={"help": "classifier-free guidance (paper: 3)"})
    duration_s: float | None = field(default=None, metadata={"help": "clip length (default: the model's)"})
    sampler: Literal["ddpm", "ddim", "dpmsolver++", "unipc"] | None = field(default=None, metadata={"help": "solver; default the model's own scheduler"})
    batch_size: int = 8
    seed: int = field(default=0, metadata={"help": "both models use the same per-clip seeds"})
    device: str | None = None
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    clap_model: str | None = field(default="laion/clap-htsat-unfused", metadata={"help": "CLAP for the CLAP score ('none' to skip)"})
    panns_checkpoint: str | None = field(default=None, metadata={"help": "Cnn14_16k_mAP=0.438.pth for FD, KL, IS"})
    vggish_checkpoint: str | None = field(default=None, metadata={"help": "vggish-10086976.pth for FAD"})
    reference_audio: str | None = field(default=None, metadata={"help": "folder of reference clips (AudioCaps test wavs), matched by file name"})
    fd_embedding: Literal["panns", "clap"] = field(
        default="panns", metadata={"help": "FD on PANNs embeddings (papers) or on CLAP audio embeddings (the toy world)"}
    )
    best_of: int = field(
        default=1, metadata={"help": "N > 1 adds the training-free baseline best_of_N: N base clips per clip, the reward model keeps the best"}
    )
    best_of_rewards: list[Any] | None = field(
        default=None,
        metadata={
            "help": "best_of_N picks by these rewards (names or {name, weight, options}, docs/rewards.md; their weighted mean); default the run's reward model"
        },
    )
    eval_rewards: list[Any] | None = field(
        default=None,
        metadata={
            "help": "judge every model's clips with these rewards too (names or {name, options}, docs/rewards.md): each one's mean and interval "
            "in the report as judge_<name>; keep them apart from the rewards the model was trained on"
        },
    )
    oracle: bool = field(default=False, metadata={"help": "judge clips with the toy world's oracle (integrity/temporal accuracy; sets detector toy)"})
    detector: Literal["toy", "panns"] | None = field(
        default=None,
        metadata={
            "help": "sound event detector for event presence/order/parsimony: 'toy' (the oracle) or 'panns' (Cnn14_DecisionLevelMax)",
            "none_turns_off": True,
        },
    )
    detector_checkpoint: str | None = field(default=None, metadata={"help": "Cnn14_DecisionLevelMax_mAP=0.385.pth for detector panns"})
    event_map: str | None = field(default=None, metadata={"help": "phrase -> AudioSet class table (default assets/audioset_event_map.tsv)"})
    presence_threshold: float | None = field(default=None, metadata={"help": "frame probability above which an event is active (default: the detector's)"})
    parsimony_threshold: float | None = field(
        default=None, metadata={"help": "probability at which an unnamed event counts against parsimony (default: the detector's)"}
    )
    min_event_s: float | None = field(default=None, metadata={"help": "shortest event, seconds of active frames (default: the detector's)"})
    max_event_gap_s: float | None = field(
        default=None, metadata={"help": "inactive gaps up to this long are bridged inside one event (default: the detector's)"}
    )
    order_margin_s: float | None = field(
        default=None, metadata={"help": "an event's onset must follow the previous one's by this much (default: the detector's)"}
    )
    across_seeds: str | None = field(
        default=None,
        metadata={
            "help": "comma list of eval folders of the same evaluation for several training seeds: writes only OUT/seeds.md and seeds.json (the spread across seeds)"
        },
    )
    bootstrap_resamples: int = field(default=2000, metadata={"help": "caption resamples for the 95% intervals of per-clip metrics (0: none)"})
    set_level_intervals: bool = field(
        default=True, metadata={"help": "jackknife intervals of FD, FAD and IS, one refit per caption (off: none; PANNs FD on many captions is slow)"}
    )
    spectrogram_examples: int = field(default=4, metadata={"help": "captions drawn in the spectrogram grid"})

    def __post_init__(self):
        self.clap_model = None if self.clap_model in ("none", "") else self.clap_model
        for name in ("clips_per_caption", "best_of"):
            if getattr(self, name) < 1:
                raise ValueError(f"config key '{name}' must be >= 1, got {getattr(self, name)}")

    def layout(self) -> RunLayout:
        aligned = None if self.aligned == "none" else self.aligned
        return RunLayout.of(self.run_dir, aligned=aligned, reward_model=self.reward_model, eval=self.out_dir)

    def generation(self, captions: Path, split: str, out: Path, export: str | None, clips_per_caption: int | None = None) -> GenerateConfig:
        """The generate stage's config for one model's clips (base: `export` None) of the evaluation
        captions, in `out`; `clips_per_caption` (default this config's) widens it for best-of-N."""
        return GenerateConfig(
            run_dir=self.run_dir,
            model=self.model,
            export=export,
            captions_file=str(captions),
            out_dir=str(out),
            split=split,
            clips_per_caption=clips_per_caption or self.clips_per_caption,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            duration_s=self.duration_s,
            sampler=self.sampler,
            batch_size=self.batch_size,
            seed=self.seed,
            device=self.device,
            dtype=self.dtype,
        )


def evaluate(config: EvaluateConfig, backends: dict[str, Any] | None = None) -> Path:
    """Generate with base and aligned models from the same seeds, score both, write the report."""

    import numpy as np

    from ..atomic import atomic_write_json
    from ..audio import load_audio
    from ..evaluation import compute_metrics, frechet_distance_from_embeddings, write_report
    from ..evaluation.clips import captions_file, read_clips
    from ..evaluation.event_scores import score_models_events
    from ..evaluation.intervals import model_intervals
    from ..evaluation.metrics import METRIC_LOUDNESS_LUFS, log_mel_embeddings, loudness_and_peak, loudness_normalised, within_caption_spread
    from ..evaluation.quality import toy_quality
    from ..evaluation.report import print_table
    from ..evaluation.reward_summary import reward_model_summary, scorer_lines
    from ..formatting import display_path
    from ..hub import is_hub_id
    from ..rewards import reward_model_spec, run_rewards
    from ..runtime import Ranks, pick_device

    layout = config.layout()
    out = layout.eval
    if config.across_seeds:
        from ..evaluation.report import write_seed_report

        path = write_seed_report([d.strip() for d in config.across_seeds.split(",") if d.strip()], out)
        print(path.read_text(encoding="utf-8"))
        return out
    out.mkdir(parents=True, exist_ok=True)
    captions, split = captions_file(config.captions, layout)
    models: dict[str, str | None] = {"base": None}
    if config.aligned != "none":
        aligned = str(layout.aligned)
        if not Path(aligned).exists() and not is_hub_id(aligned):
            raise FileNotFoundError(f"aligned export not found: {aligned} (run finetune first, or --aligned none)")
        models["aligned"] = aligned
    sample_rate = 16000
    ranks = Ranks.current()
    # best-of-N's candidates: the base model's N clips per evaluated clip that it picks from
    candidates = config.generation(captions, split, out / "clips" / f"best_of_{config.best_of}_candidates", None, config.clips_per_caption * config.best_of)
    if not ranks.is_main:  # several processes share the generation; the main process scores and reports
        for name, export in models.items():
            generate(config.generation(captions, split, out / "clips" / name, export), backend=(backends or {}).get(name))
        if config.best_of > 1:
            generate(candidates, backend=(backends or {}).get("base"))
        return out
    rows_by_model, clips_by_model = {}, {}
    for name, export in models.items():
        folder = generate(config.generation(captions, split, out / "clips" / name, export), backend=(backends or {}).get(name))
        rows_by_model[name], clips_by_model[name] = read_clips(folder, sample_rate)
    if config.best_of > 1:
        from ..evaluation.clips import best_of_n

        name = f"best_of_{config.best_of}"
        if config.best_of_rewards is None and not layout.reward_model.exists() and config.reward_model is None:
            raise FileNotFoundError(
                f"best_of {config.best_of} needs the run's reward model: {layout.reward_model} not found (run the reward stage, or --reward_model)"
            )
        folder = generate(candidates, backend=(backends or {}).get("base"))
        specs = config.best_of_rewards or [reward_model_spec(layout, config.batch_size)]
        rewards = run_rewards(specs, layout, pick_device(config.device))
        rows_by_model[name], clips_by_model[name] = best_of_n(
            folder, out / "clips" / name, rows_by_model["base"], config.clips_per_caption, rewards, sample_rate
        )
        models[name] = f"base, best of {config.best_of} by " + ("the reward model" if config.best_of_rewards is None else rewards.describe())
    rows = rows_by_model["base"]
    for name, other in rows_by_model.items():
        if [r["clip_id"] for r in other] != [r["clip_id"] for r in rows]:
            raise RuntimeError(f"{name} clips do not match the base clips one to one; delete {out / 'clips'} and rerun")

    clap = None
    if config.clap_model:
        from ..clap import ClapEmbedder

        clap = ClapEmbedder(config.clap_model, device=config.device)
    reference, names = None, None
    if config.reference_audio:
        ref_dir = Path(config.reference_audio)
        if not ref_dir.is_dir():
            raise FileNotFoundError(f"reference_audio folder not found: {ref_dir}")
        reference = {p.name: load_audio(p, sample_rate)[0] for p in sorted(ref_dir.rglob("*.wav"))}
        names = [Path(r.get("reference", "")).name or r["file_name"] for r in rows]
    # Metrics that depend on level hear every clip, and every reference, at one loudness: a louder
    # model would otherwise move FD and the spreads. Loudness, peak, the quality judge, judges and
    # event scores take the clips as they were made.
    levels = {name: loudness_and_peak(clips, sample_rate) for name, clips in clips_by_model.items()}
    heard = {name: loudness_normalised(clips, sample_rate, levels[name][0]) for name, clips in clips_by_model.items()}
    if reference:
        reference = dict(zip(reference, loudness_normalised(list(reference.values()), sample_rate)))
    result = compute_metrics(
        [r["caption"] for r in rows],
        heard,
        sample_rate,
        caption_ids=[r["caption_id"] for r in rows],
        clap=clap,
        panns=config.panns_checkpoint,
        vggish=config.vggish_checkpoint,
        reference=reference if config.fd_embedding == "panns" else None,
        names=names if config.fd_embedding == "panns" else None,
        device=config.device,
    )
    metrics, skipped, info = result.metrics, dict(result.skipped), dict(result.info)
    # Set-level metrics' embeddings (metric key -> model or "reference" -> (clips, d)), for their intervals.
    embeddings = {key: dict(value) for key, value in result.embeddings.items()}

    def fd_on_clap(key: str, reference_clips: list) -> None:
        """FD on CLAP audio embeddings of every model's clips against `reference_clips`, as metric `key`."""
        embeddings[key] = {**embeddings["clap_audio"], "reference": clap.embed_audio(reference_clips, sample_rate).cpu().numpy()}
        for name in clips_by_model:
            metrics[name][key] = frechet_distance_from_embeddings(embeddings[key][name], embeddings[key]["reference"])

    if config.fd_embedding == "clap":
        skipped.pop("fd", None)
        if clap is None or reference is None:
            skipped["fd_clap"] = "FD on CLAP embeddings needs clap_model and reference_audio"
        else:
            fd_on_clap("fd_clap", list(reference.values()))
            info["fd_clap"] = (
                f"CLAP audio embeddings ({display_path(config.clap_model)}) against all {len(reference)} reference clips of {display_path(config.reference_audio)}"
            )
    own = sorted({n for n in (names or []) if n in (reference or {})})  # the evaluated captions' own reference clips
    if clap is not None and "clap_audio" in embeddings and own and not config.oracle:
        # Matched references of a real model: the reference clip of each evaluated caption itself
        # (AudioCaps test audio named by its caption row), so FD measures the distance to the audio
        # these captions describe rather than to a folder of other clips.
        fd_on_clap("fd_matched", [reference[n] for n in own])
        info["fd_matched"] = f"CLAP audio embeddings against the {len(own)} reference clips the evaluated captions name (matched caption by caption)"
    caption_ids = [r["caption_id"] for r in rows]
    reference_diversity = None
    if config.oracle and clap is not None and "clap_audio" in embeddings:
        # Matched references: clean renderings of the evaluated captions themselves (what each caption
        # asks for, MATCHED_RENDERINGS seeds each), so that FD measures the distance to the right
        # audio rather than to the pretraining captions' loose renderings.
        from ..toyworld.render import RenderError  # lazy: the toy world is loaded for toy evaluations only

        try:
            matched = loudness_normalised(matched_toy_references(rows, clips_by_model["base"][0].shape[0] / sample_rate, config.seed), sample_rate)
        except RenderError as exc:  # clips shorter than the caption's events: the rest of the report stands
            skipped["fd_matched"] = f"the toy renderer cannot make clean references of these clips: {exc}"
        else:
            fd_on_clap("fd_matched", matched)
            info["fd_matched"] = (
                f"CLAP audio embeddings against {len(matched)} clean renderings of the evaluated captions themselves "
                f"({MATCHED_RENDERINGS} per caption, toy renderer)"
            )
            # The clean renderings' own spread: what a model that always got the caption right would
            # show (timing varies, events do not), to read each model's diversity against; a
            # base model's spread is mostly its mistakes.
            reference_diversity = matched_reference_diversity(matched, embeddings["fd_matched"]["reference"], caption_ids, sample_rate)
            info["diversity_reference"] = (
                f"the clean renderings' own diversity (CLAP) {reference_diversity['diversity']:.3f} and diversity_mel "
                f"{reference_diversity['diversity_mel']:.3f}: what a model that always gets the caption right spreads"
            )
    if "clap_audio" in embeddings and len(set(map(str, caption_ids))) < len(caption_ids):
        for name in models:
            metrics[name]["diversity"] = within_caption_spread(embeddings["clap_audio"][name], caption_ids)
    else:
        embeddings.pop("clap_audio", None)
        skipped["diversity"] = "needs clap_model and at least 2 clips per caption (--clips_per_caption)"
    if len(set(map(str, caption_ids))) < len(caption_ids):  # a second diversity measure, on the spectrograms
        embeddings["log_mel"] = {name: log_mel_embeddings(heard[name], sample_rate) for name in models}
        for name in models:
            metrics[name]["diversity_mel"] = within_caption_spread(embeddings["log_mel"][name], caption_ids)
    else:
        skipped["diversity_mel"] = "needs at least 2 clips per caption (--clips_per_caption)"
    per_clip: dict[str, dict[str, list[float]]] = {name: {} for name in models}  # model -> metric -> per-clip values
    for name in models:
        if "clap_score" in metrics[name]:
            per_clip[name]["clap_score"] = [row[name] for row in result.per_caption]
        per_clip[name].update(result.per_clip.get(name, {}))
        lufs, peaks = levels[name]
        for key, values in (("loudness_lufs", lufs), ("peak_dbfs", peaks)):
            metrics[name][key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
            per_clip[name][key] = values.tolist()
        if config.oracle:  # the toy world's MOS-Q stand-in, independent of the reward and the losses
            quality = toy_quality(np.stack(clips_by_model[name]), sample_rate)
            metrics[name]["toy_quality"] = float(quality.mean())
            per_clip[name]["toy_quality"] = quality.tolist()
    if config.eval_rewards:
        from reward_hub.rewards import RewardSet, ScoreCache

        # Judges, not training rewards: a judge-only reward (the toy oracle) is welcome here.
        judges = RewardSet(config.eval_rewards, device=pick_device(config.device), cache=ScoreCache(layout.reward_scores))
        for name in models:
            parts = judges.score([r["caption"] for r in rows_by_model[name]], clips_by_model[name], sample_rate)
            for key, values in parts.items():
                metrics[name][f"judge_{key}"] = float(np.mean(values))
                per_clip[name][f"judge_{key}"] = values.tolist()
        info["judges"] = "; ".join(f"judge_{key}: {reward.identity()}" for key, reward in zip(judges.keys, judges.rewards))
    detector_name = config.detector or ("toy" if config.oracle else None)
    if detector_name:
        info.update(score_models_events(config, detector_name, rows_by_model, clips_by_model, sample_rate, metrics, per_clip, skipped, out))
    info.update(scorer_lines(layout, config.clap_model, info.get("event_detector")))
    info["level"] = (
        f"CLAP score, FD, FAD, KL, IS and both diversities on clips and references normalised to {METRIC_LOUDNESS_LUFS:.0f} LUFS "
        "(ITU-R BS.1770-4); loudness, peak, the quality judge, judges and event scores on the clips as generated"
    )
    intervals = {}
    if config.bootstrap_resamples > 0:
        intervals = model_intervals(per_clip, embeddings, caption_ids, config.bootstrap_resamples, config.set_level_intervals, seed=config.seed)
        info["intervals"] = (
            f"95% bootstrap over the {len(set(map(str, caption_ids)))} captions ({config.bootstrap_resamples} resamples"
            + ("; FD, FAD and IS: delete-one-caption jackknife" if config.set_level_intervals else "; none for FD, FAD and IS")
            + "), paired between models on the same captions and seeds"
        )
    if intervals and config.oracle:
        info["quality"] = quality_verdict(metrics, intervals)
    info.update(
        {
            "captions": display_path(config.captions),
            "clips_per_model": len(rows),
            "seed": config.seed,
            "steps": config.num_inference_steps,
            "guidance": config.guidance_scale,
            "model": display_path(config.model),
            "aligned": display_path(models.get("aligned")),
        }
    )
    extra, reward_info = reward_model_summary(layout, out)
    info.update(reward_info)
    spectrograms = {}
    for i in np.linspace(0, len(rows) - 1, min(config.spectrogram_examples, len(rows))).astype(int).tolist():
        spectrograms[rows[i]["caption"]] = {name: (clips_by_model[name][i], sample_rate) for name in models}
    files = write_report(
        out, metrics, result.per_caption, spectrograms, skipped=skipped, info=info, intervals=intervals, title=f"BATON evaluation: {', '.join(models)}"
    )
    # metrics.json also carries each model's numbers at the top level ({"base": ..., "aligned": ...},
    # where the toy world's FD on CLAP embeddings is its `fd`) and the run's own numbers beside them.
    data = json.loads(files["metrics.json"].read_text(encoding="utf-8"))
    for name in models:
        values = dict(data["metrics"][name])
        if "fd_clap" in values and "fd" not in values:
            values["fd"] = values.pop("fd_clap")
        data[name] = values
    data.update(extra)
    if reference_diversity is not None:
        data["reference_diversity"] = reference_diversity
    atomic_write_json(out / "metrics.json", data)
    print_table(metrics)
    return out


def quality_verdict(metrics: dict, intervals: dict) -> str:
    """One sentence per model against the first (base): was quality kept? Kept when the toy quality
    judge's paired 95 % interval of the difference does not lie wholly below 0; the loudness
    difference is given beside it, since a louder model biases listeners."""
    models = list(metrics)
    sentences = []
    for name in models[1:]:
        q = intervals.get(name, {}).get("toy_quality", {})
        loud = intervals.get(name, {}).get("loudness_lufs", {})
        if "difference_lo" not in q:
            continue
        kept = "kept" if q["difference_hi"] >= 0 else "lower"
        line = (
            f"{name}: quality {kept} (toy quality judge {metrics[name]['toy_quality']:.2f} vs {metrics[models[0]]['toy_quality']:.2f} "
            f"for {models[0]}, difference {q['difference']:+.2f} [{q['difference_lo']:+.2f}, {q['difference_hi']:+.2f}])"
        )
        if math.isfinite(loud.get("difference", math.nan)):
            line += f"; loudness {loud['difference']:+.1f} LU [{loud['difference_lo']:+.1f}, {loud['difference_hi']:+.1f}]"
        sentences.append(line + ".")
    return " ".join(sentences)


MATCHED_RENDERINGS = 4  # clean renderings per evaluated caption for the matched-reference FD


def matched_reference_diversity(matched: list, clap_embeddings, caption_ids: list, sample_rate: int) -> dict[str, float]:
    """Diversity (CLAP) and diversity_mel of the clean renderings `matched_toy_references` made for
    clips of `caption_ids`, each caption's renderings grouped together."""
    from ..evaluation.metrics import log_mel_embeddings, within_caption_spread  # lazy: as in `evaluate`

    ids = [c for c in dict.fromkeys(map(str, caption_ids)) for _ in range(MATCHED_RENDERINGS)]
    return {"diversity": within_caption_spread(clap_embeddings, ids), "diversity_mel": within_caption_spread(log_mel_embeddings(matched, sample_rate), ids)}


def matched_toy_references(rows: list[dict], duration_s: float, seed: int) -> list:
    """Clean toy renderings of each evaluated caption's events in its order (`render_sequence`),
    MATCHED_RENDERINGS per caption, with seeds apart from every clip's."""
    from ..toyworld.render import render_sequence

    captions = {}
    for r in rows:
        captions.setdefault(str(r["caption_id"]), list(r["labels"]))
    return [
        render_sequence(labels, seed=[seed, 7919, i, k], duration_s=duration_s) for i, labels in enumerate(captions.values()) for k in range(MATCHED_RENDERINGS)
    ]
