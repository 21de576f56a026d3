"""Re-derive the toy quality judge's calibration and measure its validation table.

    python benchmarks/quality_judge_calibration.py [--clean 256] [--validation 64]

1. Calibration (`baton_trainer.evaluation.quality.CALIBRATION`): each artifact measure's median and
   95th percentile over `--clean` clean renderings (`render_dataset(n, seed=2024)`), and its median
   over the same clips made clearly broken by the degradation it targets (QUALITY_ANCHORS: clipping
   at 40 dB of drive, 20 clicks per second at the peak, white noise at 0 dB SNR, Griffin-Lim with no
   iterations). Printed as the dict to paste into the module, rounded as there.
2. Validation, with the module's constants as they stand: the judge's mean score and its standard
   error over `--validation` clean renderings of other captions (`render_dataset(n, seed=7)`),
   clean and under each degradation type at its three levels (VALIDATION_LEVELS), and whether the
   means fall strictly with the level, each step by more than the two sets' standard errors.

3. With `--toy_models`: the judge's scores of the shipped toy TANGO and of it with the shipped
   aligned export (`baton_trainer/toyworld/pretrained/toy_aligned`), one clip per validation caption
   (seeds 0..n-1, 25 steps, guidance 3, as the default run's evaluation samples), and their paired
   difference: a first look at what the default run's alignment does to the judge's score.

Writes benchmarks/results/quality_judge_calibration.json (and a Markdown table beside it).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from baton_trainer.evaluation import quality
from baton_trainer.evaluation.quality_validation import degrade
from baton_trainer.toyworld import render_dataset

SAMPLE_RATE = 16000
RESULTS = Path(__file__).resolve().parent / "results"

VALIDATION_LEVELS = quality.VALIDATION_LEVELS  # three levels per type, mildest first (the test uses the same)
# The clearly broken clip of each measure: (measure, degradation type, setting).
QUALITY_ANCHORS = {
    "clipped_fraction": ("clipping", {"drive_db": 40.0}),
    "transient_rate": ("clicks", {"rate_hz": 20.0, "amplitude": 1.0}),
    "noise_floor_db": ("noise", {"snr_db": 0.0}),
    "frame_buzz": ("griffin_lim", {"n_iter": 0}),
}


def calibrate(n: int, seed: int) -> dict:
    clean = render_dataset(n, seed=seed)["audio"]
    measured = quality.artifact_measures(clean, SAMPLE_RATE)
    out = {}
    for name in quality.MEASURES:
        kind, setting = QUALITY_ANCHORS[name]
        broken = quality.artifact_measures(degrade(clean, SAMPLE_RATE, kind, setting, seed=1), SAMPLE_RATE)[name]
        out[name] = {
            "clean_median": float(np.median(measured[name])),
            "clean_p95": float(np.quantile(measured[name], 0.95)),
            "broken": float(np.median(broken)),
            "broken_by": {"degradation": kind, **setting},
        }
    return out


def validate(n: int, seed: int) -> dict:
    clean = render_dataset(n, seed=seed)["audio"]
    scores = {"clean": quality.toy_quality(clean, SAMPLE_RATE)}
    measures = {"clean": quality.artifact_measures(clean, SAMPLE_RATE)}
    for kind, levels in VALIDATION_LEVELS.items():
        for level, setting in enumerate(levels, start=1):
            degraded = degrade(clean, SAMPLE_RATE, kind, setting, seed=level)
            scores[f"{kind}_{level}"] = quality.toy_quality(degraded, SAMPLE_RATE)
            measures[f"{kind}_{level}"] = quality.artifact_measures(degraded, SAMPLE_RATE)

    def summary(values):
        return {
            "mean": float(np.mean(values)),
            "se": float(np.std(values, ddof=1) / math.sqrt(len(values))),
            "min": float(np.min(values)),
            "max": float(np.max(values)),
        }

    table = {key: summary(values) for key, values in scores.items()}
    monotone = {}
    for kind in VALIDATION_LEVELS:
        chain = ["clean"] + [f"{kind}_{level}" for level in (1, 2, 3)]
        monotone[kind] = all(table[a]["mean"] - table[b]["mean"] > table[a]["se"] + table[b]["se"] for a, b in zip(chain, chain[1:]))
    measure_means = {key: {name: float(np.mean(values[name])) for name in quality.MEASURES} for key, values in measures.items()}
    return {"scores": table, "monotone_with_margin": monotone, "measure_means": measure_means}


def toy_models(n: int, seed: int, steps: int = 25, guidance: float = 3.0) -> dict:
    from baton_trainer.backends import load_backend
    from baton_trainer.stages.run import TOY_PRETRAINED

    captions = render_dataset(n, seed=seed)["caption"]
    models = {"toy_tango": {}, "toy_tango + toy_aligned": {"export": str(TOY_PRETRAINED / "toy_aligned")}}
    scores, out = {}, {}
    for name, options in models.items():
        model = load_backend(str(TOY_PRETRAINED / "toy_tango"), **options)
        clips = np.stack(
            [np.asarray(clip, dtype=np.float32) for clip in model.generate(captions, seeds=list(range(n)), num_inference_steps=steps, guidance_scale=guidance)]
        )
        scores[name] = quality.toy_quality(clips, SAMPLE_RATE)
        measured = quality.artifact_measures(clips, SAMPLE_RATE)
        out[name] = {
            "mean": float(scores[name].mean()),
            "se": float(scores[name].std(ddof=1) / math.sqrt(n)),
            "median": float(np.median(scores[name])),
            "measure_medians": {key: float(np.median(values)) for key, values in measured.items()},
        }
    difference = scores["toy_tango + toy_aligned"] - scores["toy_tango"]
    out["paired_difference"] = {"mean": float(difference.mean()), "se": float(difference.std(ddof=1) / math.sqrt(n))}
    out["sampling"] = {"captions": f"render_dataset({n}, seed={seed})", "seeds": f"0..{n - 1}", "num_inference_steps": steps, "guidance_scale": guidance}
    return out


def markdown(result: dict) -> str:
    table = result["validation"]["scores"]
    lines = [
        f"Toy quality judge, validation: mean score (standard error) over {result['validation_clips']} clean renderings "
        f"(`render_dataset({result['validation_clips']}, seed={result['validation_seed']})`) and their degraded copies.",
        "",
        "| degradation | clean | level 1 | level 2 | level 3 | levels | monotone |",
        "|---|---|---|---|---|---|:---:|",
    ]
    clean = table["clean"]
    for kind, levels in VALIDATION_LEVELS.items():
        cells = [f"{table[f'{kind}_{level}']['mean']:.2f} ({table[f'{kind}_{level}']['se']:.2f})" for level in (1, 2, 3)]
        settings = ", ".join(", ".join(f"{k} {v:g}" for k, v in setting.items()) for setting in levels)
        ok = "yes" if result["validation"]["monotone_with_margin"][kind] else "NO"
        lines.append(f"| {kind} | {clean['mean']:.2f} ({clean['se']:.2f}) | " + " | ".join(cells) + f" | {settings} | {ok} |")
    if "toy_models" in result:
        models = result["toy_models"]
        lines += ["", "| shipped toy model | mean score (SE) | median |", "|---|---|---|"]
        lines += [f"| {name} | {row['mean']:.2f} ({row['se']:.2f}) | {row['median']:.2f} |" for name, row in models.items() if "median" in row]
        diff = models["paired_difference"]
        lines.append(f"| aligned - base, paired | {diff['mean']:+.2f} ({diff['se']:.2f}) | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", type=int, default=256, help="clean renderings for the calibration")
    parser.add_argument("--clean_seed", type=int, default=2024)
    parser.add_argument("--validation", type=int, default=64, help="clean renderings for the validation table")
    parser.add_argument("--validation_seed", type=int, default=7)
    parser.add_argument("--toy_models", action="store_true", help="also score the shipped toy TANGO and its aligned export (about a minute on CPU)")
    parser.add_argument("--out", default=str(RESULTS / "quality_judge_calibration.json"))
    args = parser.parse_args()

    started = time.perf_counter()
    calibration = calibrate(args.clean, args.clean_seed)
    calibrated_s = time.perf_counter() - started
    suggested = {name: {"clean": round(c["clean_p95"], 3), "broken": round(c["broken"], 2)} for name, c in calibration.items()}
    medians = {name: round(c["clean_median"], 3) for name, c in calibration.items()}
    print("CALIBRATION =", json.dumps(suggested))
    print("CLEAN_MEDIAN =", json.dumps(medians))
    in_module = {name: dict(quality.CALIBRATION[name]) for name in quality.MEASURES}
    drift = {
        name: max(abs(suggested[name]["clean"] - in_module[name]["clean"]), abs(suggested[name]["broken"] - in_module[name]["broken"]))
        for name in quality.MEASURES
    }

    started = time.perf_counter()
    validation = validate(args.validation, args.validation_seed)
    validated_s = time.perf_counter() - started
    result = {
        "calibration_clips": args.clean,
        "calibration_seed": args.clean_seed,
        "calibration": calibration,
        "suggested_constants": suggested,
        "suggested_clean_median": medians,
        "module_constants": in_module,
        "module_clean_median": dict(quality.CLEAN_MEDIAN),
        "largest_difference_from_module": drift,
        "validation_clips": args.validation,
        "validation_seed": args.validation_seed,
        "validation_levels": VALIDATION_LEVELS,
        "validation": validation,
        "seconds": {"calibration": round(calibrated_s, 2), "validation": round(validated_s, 2)},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()},
    }
    if args.toy_models:
        started = time.perf_counter()
        result["toy_models"] = toy_models(args.validation, args.validation_seed)
        result["seconds"]["toy_models"] = round(time.perf_counter() - started, 2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    print(f"wrote {out} ({calibrated_s:.1f} s calibration, {validated_s:.1f} s validation)")


if __name__ == "__main__":
    main()
