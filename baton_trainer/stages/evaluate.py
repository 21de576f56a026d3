"""The `evaluate` stage: the same captions and seeds through the base and the aligned model, the
paper's metrics for both, and a report.

    python -m baton_trainer evaluate --run_dir RUN --model declare-lab/tango-full-ft-audiocaps [--aligned RUN/aligned]

    captions -> RUN/eval/clips/base/, RUN/eval/clips/aligned/ (generate stage, resumable)
             -> metrics (CLAP score, FD, FAD, KL, IS; oracle accuracies in the toy world)
             -> RUN/eval/report.md, metrics.json, *.png
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..layout import RunLayout


@dataclass
class EvaluateConfig:
    run_dir: str = field(default="run", metadata={"help": "run folder: writes RUN/eval/"})
    model: str = field(default="declare-lab/tango-full-ft-audiocaps", metadata={"help": "base model (folder or Hub id)"})
    aligned: str | None = field(default=None, metadata={"help": "aligned export, a folder or Hub id (default RUN/aligned); 'none' evaluates the base only", "none_turns_off": True})
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
    oracle: bool = field(default=False, metadata={"help": "judge clips with the toy world's oracle (integrity/temporal accuracy)"})
    spectrogram_examples: int = field(default=4, metadata={"help": "captions drawn in the spectrogram grid"})

    def __post_init__(self):
        self.clap_model = None if self.clap_model in ("none", "") else self.clap_model
        for name in ("clips_per_caption", "best_of"):
            if getattr(self, name) < 1:
                raise ValueError(f"config key '{name}' must be >= 1, got {getattr(self, name)}")

    def layout(self) -> RunLayout:
        aligned = None if self.aligned == "none" else self.aligned
        return RunLayout.of(self.run_dir, aligned=aligned, reward_model=self.reward_model, eval=self.out_dir)


def evaluate(config: EvaluateConfig, backends: dict[str, Any] | None = None) -> Path:
    """Generate with base and aligned models from the same seeds, score both, write the report."""
    import json

    import numpy as np

    from ..atomic import atomic_write_json
    from ..audio import load_audio
    from ..evaluation import compute_metrics, frechet_distance_from_embeddings, write_report
    from ..evaluation.clips import captions_file, generate_clips, oracle_metrics, read_clips
    from ..evaluation.report import print_table
    from ..formatting import display_path
    from ..evaluation.reward_summary import reward_model_summary
    from ..hub import is_hub_id

    layout = config.layout()
    out = layout.eval
    out.mkdir(parents=True, exist_ok=True)
    captions, split = captions_file(config, layout)
    models: dict[str, str | None] = {"base": None}
    if config.aligned != "none":
        aligned = str(layout.aligned)
        if not Path(aligned).exists() and not is_hub_id(aligned):
            raise FileNotFoundError(f"aligned export not found: {aligned} (run finetune first, or --aligned none)")
        models["aligned"] = aligned
    sample_rate = 16000
    rows_by_model, clips_by_model = {}, {}
    for name, export in models.items():
        folder = generate_clips(config, captions, split, out / "clips" / name, export, (backends or {}).get(name))
        rows_by_model[name], clips_by_model[name] = read_clips(folder, sample_rate)
    if config.best_of > 1:
        from ..evaluation.clips import best_of_n

        name = f"best_of_{config.best_of}"
        rows_by_model[name], clips_by_model[name] = best_of_n(config, layout, captions, split, rows_by_model["base"], sample_rate, (backends or {}).get("base"))
        models[name] = f"base, best of {config.best_of} by the reward model"
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
            info["fd_clap"] = f"CLAP audio embeddings ({display_path(config.clap_model)}) against {len(reference)} reference clips"
    if config.oracle:
        for name in models:
            metrics[name].update(oracle_metrics(rows_by_model[name], clips_by_model[name], sample_rate))
    info.update({"captions": display_path(config.captions), "clips_per_model": len(rows), "seed": config.seed,
                 "steps": config.num_inference_steps, "guidance": config.guidance_scale,
                 "model": display_path(config.model), "aligned": display_path(models.get("aligned"))})
    extra, reward_info = reward_model_summary(layout, out)
    info.update(reward_info)
    spectrograms = {}
    for i in np.linspace(0, len(rows) - 1, min(config.spectrogram_examples, len(rows))).astype(int).tolist():
        spectrograms[rows[i]["caption"]] = {name: (clips_by_model[name][i], sample_rate) for name in models}
    files = write_report(out, metrics, result.per_caption, spectrograms, skipped=skipped, info=info,
                         title=f"BATON evaluation: {', '.join(models)}")
    # metrics.json also carries each model's numbers at the top level ({"base": ..., "aligned": ...},
    # where the toy world's FD on CLAP embeddings is its `fd`) and the run's own numbers beside them.
    data = json.loads(files["metrics.json"].read_text(encoding="utf-8"))
    for name in models:
        values = dict(data["metrics"][name])
        if "fd_clap" in values and "fd" not in values:
            values["fd"] = values.pop("fd_clap")
        data[name] = values
    data.update(extra)
    atomic_write_json(out / "metrics.json", data)
    print_table(metrics)
    return out
