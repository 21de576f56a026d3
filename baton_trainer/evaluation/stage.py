"""The `evaluate` stage: the same captions and seeds through the base and the aligned model, the
paper's metrics for both, and a report.

    captions -> RUN/eval/clips/base/, RUN/eval/clips/aligned/ (generate stage, resumable)
             -> metrics (CLAP score, FD, FAD, KL, IS; oracle accuracies in the toy world)
             -> RUN/eval/report.md, metrics.json, *.png
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..audio import atomic_write_bytes, load_audio


@dataclass
class EvaluateConfig:
    run_dir: str = field(default="run", metadata={"help": "run folder: writes RUN/eval/"})
    model: str = field(default="declare-lab/tango-full-ft-audiocaps", metadata={"help": "base model (folder or Hub id)"})
    aligned: str | None = field(default=None, metadata={"help": "aligned export (default RUN/aligned); 'none' evaluates the base only"})
    captions: str = field(
        default="paper",
        metadata={"help": "'paper' (the 148 + 165 AudioCaps test captions), 'heldout' (RUN/captions.jsonl held-out split), or a captions file"},
    )
    out_dir: str | None = field(default=None, metadata={"help": "default RUN/eval"})
    clips_per_caption: int = field(default=1, metadata={"help": "clips per caption and model"})
    num_inference_steps: int = field(default=200, metadata={"help": "sampling steps (paper: 200)"})
    guidance_scale: float = field(default=3.0, metadata={"help": "classifier-free guidance (paper: 3)"})
    duration_s: float | None = field(default=None, metadata={"help": "clip length (default: the model's)"})
    sampler: Literal["ddpm", "ddim"] | None = None
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
    oracle: bool = field(default=False, metadata={"help": "judge clips with the toy world's oracle (integrity/temporal accuracy)"})
    spectrogram_examples: int = field(default=4, metadata={"help": "captions drawn in the spectrogram grid"})

    def __post_init__(self):
        run = Path(self.run_dir)
        self.out_dir = self.out_dir or str(run / "eval")
        if self.aligned is None:
            self.aligned = str(run / "aligned")
        self.aligned = None if self.aligned == "none" else self.aligned
        self.clap_model = None if self.clap_model in ("none", "") else self.clap_model
        if self.clips_per_caption < 1:
            raise ValueError(f"config key 'clips_per_caption' must be >= 1, got {self.clips_per_caption}")


def _captions_file(config: EvaluateConfig, out: Path) -> tuple[Path, str]:
    """The captions to evaluate as a JSONL file the generate stage reads, and its split filter."""
    if config.captions == "paper":
        from .test_captions import load_test_captions

        rows = [{**r, "labels": r.get("labels", []), "split": "heldout"} for r in load_test_captions()]
        path = out / "captions.jsonl"
        atomic_write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
        return path, "all"
    if config.captions == "heldout":
        path = Path(config.run_dir) / "captions.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"captions=heldout needs {path} (run the prompts stage first)")
        return path, "heldout"
    path = Path(config.captions)
    if not path.is_file():
        raise FileNotFoundError(f"captions file not found: {path}")
    return path, "all"


def _generate(config: EvaluateConfig, captions_file: Path, split: str, out: Path, export: str | None, backend=None) -> Path:
    from ..generate import GenerateConfig, generate

    gen = GenerateConfig(
        run_dir=config.run_dir,
        model=config.model,
        export=export,
        captions_file=str(captions_file),
        out_dir=str(out),
        split=split,
        clips_per_caption=config.clips_per_caption,
        num_inference_steps=config.num_inference_steps,
        guidance_scale=config.guidance_scale,
        duration_s=config.duration_s,
        sampler=config.sampler,
        batch_size=config.batch_size,
        seed=config.seed,
        device=config.device,
        dtype=config.dtype,
    )
    return generate(gen, backend=backend)


def read_clips(folder: Path, sample_rate: int = 16000) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    from ..generate import read_generations

    rows = read_generations(folder)
    rows.sort(key=lambda r: (r["caption_id"], r["clip_index"]))
    clips = [load_audio(folder / r["file_name"], sample_rate, what=str(folder / r["file_name"]))[0] for r in rows]
    return rows, clips


def oracle_metrics(rows: list[dict[str, Any]], clips: list[np.ndarray], sample_rate: int) -> dict[str, float]:
    """Integrity accuracy on 2-label (integrity-task) captions, temporal accuracy on 3-label
    (temporal-task) captions, as the oracle judges them, each with its standard error."""
    from ..toyworld.oracle import alignment_outcomes

    result: dict[str, float] = {}
    for task in ("integrity", "temporal"):
        picked = [i for i, r in enumerate(rows) if r.get("task") == task]
        if not picked:
            continue
        outcomes = alignment_outcomes([clips[i] for i in picked], [rows[i]["labels"] for i in picked], task, sample_rate)
        p, n = float(np.mean(outcomes)), len(outcomes)
        result[f"{task}_accuracy"] = p
        result[f"{task}_accuracy_se"] = math.sqrt(p * (1 - p) / n)
        result[f"{task}_clips"] = n
    return result


def evaluate(config: EvaluateConfig, backends: dict[str, Any] | None = None) -> Path:
    """Generate with base and aligned models from the same seeds, score both, write the report."""
    from . import compute_metrics, frechet_distance_from_embeddings, write_report

    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    captions_file, split = _captions_file(config, out)
    models = {"base": None}
    if config.aligned:
        if not Path(config.aligned).exists():
            raise FileNotFoundError(f"aligned export not found: {config.aligned} (run finetune first, or --aligned none)")
        models["aligned"] = config.aligned
    sample_rate = 16000
    rows_by_model, clips_by_model = {}, {}
    for name, export in models.items():
        folder = _generate(config, captions_file, split, out / "clips" / name, export, (backends or {}).get(name))
        rows_by_model[name], clips_by_model[name] = read_clips(folder, sample_rate)
    rows = rows_by_model["base"]
    for name, other in rows_by_model.items():
        if [r["clip_id"] for r in other] != [r["clip_id"] for r in rows]:
            raise RuntimeError(f"{name} clips do not match the base clips one to one; delete {out / 'clips'} and rerun")

    clap = None
    if config.clap_model:
        from reward_hub.clap import ClapEmbedder

        clap = ClapEmbedder(config.clap_model, device=config.device)
    reference, names = None, None
    if config.reference_audio:
        ref_dir = Path(config.reference_audio)
        if not ref_dir.is_dir():
            raise FileNotFoundError(f"reference_audio folder not found: {ref_dir}")
        reference = {p.name: load_audio(p, sample_rate)[0] for p in sorted(ref_dir.rglob("*.wav"))}
        names = [Path(r.get("reference", "")).name or r["file_name"] for r in rows]
    result = compute_metrics(
        [r["caption"] for r in rows],
        clips_by_model,
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
    if config.fd_embedding == "clap":
        skipped.pop("fd", None)
        if clap is None or reference is None:
            skipped["fd_clap"] = "FD on CLAP embeddings needs clap_model and reference_audio"
        else:
            ref_emb = clap.embed_audio(list(reference.values()), sample_rate).cpu().numpy()
            for name, clips in clips_by_model.items():
                emb = clap.embed_audio(clips, sample_rate).cpu().numpy()
                metrics[name]["fd_clap"] = frechet_distance_from_embeddings(emb, ref_emb)
            info["fd_clap"] = f"CLAP audio embeddings ({config.clap_model}) against {len(reference)} reference clips"
    if config.oracle:
        for name in models:
            metrics[name].update(oracle_metrics(rows_by_model[name], clips_by_model[name], sample_rate))
    info.update({"captions": str(config.captions), "clips_per_model": len(rows), "seed": config.seed,
                 "steps": config.num_inference_steps, "guidance": config.guidance_scale, "model": config.model, "aligned": config.aligned})
    reward_metrics = Path(config.run_dir) / "reward_model" / "metrics.json"
    extra: dict[str, Any] = {}
    histogram = reward_metrics.with_name("reward_histogram.png")
    label_check_plot = Path(config.run_dir) / "reward_label_check.png"
    if label_check_plot.is_file():  # toy world: every reward label by the oracle's answer
        atomic_write_bytes(out / "reward_histogram.png", label_check_plot.read_bytes())
        info["reward_histogram"] = "reward_histogram.png (the reward labels of the clips nobody rated, by the oracle's answer)"
    elif histogram.is_file():  # the reward model's held-out rewards by human label (the paper's Figure 4)
        atomic_write_bytes(out / "reward_histogram.png", histogram.read_bytes())
        info["reward_histogram"] = "reward_histogram.png (held-out rewards of the run's reward model, by rating)"
    if reward_metrics.is_file():
        overall = json.loads(reward_metrics.read_text()).get("validation", {}).get("overall", {})
        if overall.get("accuracy") is not None:
            extra["reward_model_accuracy"] = overall["accuracy"]
            info["reward_model_accuracy"] = f"{100 * overall['accuracy']:.1f}% on {overall.get('count', '?')} held-out validation ratings"
    label_check = Path(config.run_dir) / "reward_label_check.json"
    check = json.loads(label_check.read_text()) if label_check.is_file() else {}
    if check.get("accuracy") is not None:
        # Toy world: the oracle judged every clip the reward model labelled; with few ratings this
        # held-out set is far larger than the validation split, so it is the accuracy reported.
        if "reward_model_accuracy" in extra:
            extra["reward_model_validation_accuracy"] = extra["reward_model_accuracy"]
        extra["reward_model_accuracy"] = check["accuracy"]
        extra["reward_label_check"] = check
        info["reward_model_accuracy"] = (f"{100 * check['accuracy']:.1f}% of {check['clips']} reward labels agree with the oracle"
                                         + (f" ({info['reward_model_accuracy']})" if "reward_model_accuracy" in info else ""))
    spectrograms = {}
    for i in np.linspace(0, len(rows) - 1, min(config.spectrogram_examples, len(rows))).astype(int).tolist():
        spectrograms[rows[i]["caption"]] = {name: (clips_by_model[name][i], sample_rate) for name in models}
    files = write_report(out, metrics, result.per_caption, spectrograms, skipped=skipped, info=info,
                         title=f"BATON evaluation: {', '.join(models)}")
    # metrics.json also carries each model's numbers at the top level ({"base": ..., "aligned": ...},
    # where the toy world's FD on CLAP embeddings is its `fd`) and the run's own numbers beside them.
    data = json.loads(files["metrics.json"].read_text())
    for name in models:
        values = dict(data["metrics"][name])
        if "fd_clap" in values and "fd" not in values:
            values["fd"] = values.pop("fd_clap")
        data[name] = values
    data.update(extra)
    atomic_write_bytes(out / "metrics.json", (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode())
    _print_table(metrics)
    return out


def _print_table(metrics: dict[str, dict[str, float]]) -> None:
    keys = [k for k in next(iter(metrics.values())) if not k.endswith(("_se", "_clips", "_std"))]
    print("metric".ljust(22) + "".join(name.rjust(12) for name in metrics))
    for key in keys:
        print(key.ljust(22) + "".join(f"{metrics[name].get(key, float('nan')):12.4f}" for name in metrics))
