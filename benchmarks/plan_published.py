"""The memory planner on the published architectures: each recipe of `recipes/` planned at its
checkpoint's real size, from configs alone (nothing downloaded), and the largest batch per recipe
that fits one 80 GB GPU with 20 % headroom.

    python benchmarks/plan_published.py

The architectures are built on the meta device by `benchmarks/backend_step.py`'s published-size
builders (TANGO from the repo's configs; AudioLDM 2, Stable Audio Open and Stable Audio 3 from the
released configs as data; LongCat-AudioDiT's are not known here), written as config folders (`planning.save_configs`) and planned
(`planning.estimate`) with each recipe's settings. Beside them, the planner against the peak
memory measured on an H200 by `benchmarks/tango_step.py` (`tango_step_NVIDIA_H200.json`: TANGO,
batch 6, bf16, no latent cache). Writes `benchmarks/results/plan_published.{json,md}`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from backend_step import audioldm2_full, stable_audio_3_full, stable_audio_full, tango_full  # noqa: E402

RECIPES = ROOT.parent / "recipes"
BUDGET_GIB = 64.0  # one 80 GB GPU, 20 % left for the allocator's cache, kernels' workspaces and the data
BATCHES = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64)


# LongCat-AudioDiT's released configs are not known here (diffusers' class defaults are not its
# published sizes): its recipes are planned from the Hub id with `plan`.
BUILDERS = {"tango": tango_full, "audioldm2": audioldm2_full, "stable_audio_open": stable_audio_full, "stable_audio_3": stable_audio_3_full}


def builder_for(recipe: Path):
    return next((build for prefix, build in BUILDERS.items() if recipe.stem.startswith(prefix)), None)


def main() -> int:
    from baton_trainer.config import load_yaml
    from baton_trainer.planning import WeightlessModel, estimate, save_configs
    from baton_trainer.stages.plan import PlanConfig

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for recipe in sorted(RECIPES.glob("*.yaml")):
            build = builder_for(recipe)
            if build is None:
                print(f"{recipe.name}: no published configs here; plan it from its Hub id", flush=True)
                continue
            if build not in folders:
                folders[build] = save_configs(build("meta"), Path(tmp) / build.__name__)
            values = {**load_yaml(recipe), "model": str(folders[build])}
            config = PlanConfig(**{k: v for k, v in values.items()})
            model = WeightlessModel(config.model)
            mode = "lora" if config.use_lora else "full"
            planned = estimate(model, config, mode, "baton")
            # Only the activations grow with the batch, and linearly (checked in tests/test_plan.py):
            # a second plan at twice the batch gives the slope.
            double = estimate(model, PlanConfig(**{**values, "train_batch_size": 2 * config.train_batch_size}), mode, "baton")
            per_clip = (double.total - planned.total) / config.train_batch_size
            fits = [b for b in BATCHES if (planned.total + (b - config.train_batch_size) * per_clip) / 2**30 <= BUDGET_GIB]
            row = {
                "recipe": recipe.name,
                "mode": mode,
                "batch": config.train_batch_size,
                "precision": config.mixed_precision,
                "gradient_checkpointing": config.gradient_checkpointing,
                "optimizer": config.optimizer,
                "trained_parameters": planned.trained_parameters,
                "planned_gib": planned.total / 2**30,
                "parts_gib": {k: v / 2**30 for k, v in planned.parts.items()},
                "largest_batch_within_64_gib": max(fits) if fits else None,
            }
            print(flush=True)
            print(
                f"{recipe.name:36s} {mode:4s} batch {row['batch']:3d}: {row['planned_gib']:6.1f} GiB; largest batch within {BUDGET_GIB:.0f} GiB: {row['largest_batch_within_64_gib']}"
            )
            rows.append(row)
        # the planner against a measured peak: TANGO at batch 6, bf16, as tango_step.py trained it on an H200
        measured = {r["config"]: r["peak_memory_gib"] for r in json.loads((ROOT / "results" / "tango_step_NVIDIA_H200.json").read_text())["results"]}
        tango = WeightlessModel(str(folders[tango_full]))
        check = []
        for name, lora, checkpointing in (("full", False, False), ("full+gc", False, True), ("lora", True, False), ("lora+gc", True, True)):
            config = PlanConfig(
                model=str(tango.folder),
                train_batch_size=3,
                pretrain_dataset="x",
                pretrain_batch_size=3,
                mixed_precision="bf16",
                use_lora=lora,
                gradient_checkpointing=checkpointing,
            )
            planned = estimate(tango, config, "lora" if lora else "full", "baton").total / 2**30
            check.append({"config": name, "planned_gib": planned, "measured_gib": measured[name], "ratio": planned / measured[name]})
            print(f"TANGO {name:8s} batch 6 bf16: planned {planned:5.1f} GiB, measured on an H200 {measured[name]:5.1f} GiB (x{planned / measured[name]:.2f})")
    out = ROOT / "results" / "plan_published.json"
    out.write_text(json.dumps({"budget_gib": BUDGET_GIB, "recipes": rows, "against_h200": check}, indent=2) + "\n")
    lines = [
        "# Planned memory of each recipe at its checkpoint's published size (one process, `python benchmarks/plan_published.py`)",
        "",
        "| recipe | mode | batch | precision | checkpointing | optimiser | trained parameters | planned GiB | largest batch within 64 GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['mode']} | {r['batch']} | {r['precision']} | {r['gradient_checkpointing']} | {r['optimizer']} | {r['trained_parameters']:,} | {r['planned_gib']:.1f} | {r['largest_batch_within_64_gib']} |"
        )
    lines += ["", "The planner against the peak measured on an H200 (TANGO, batch 6 = 3 feedback + 3 pretraining clips, bf16, `tango_step.py`):", ""]
    lines += ["| configuration | planned GiB | measured GiB | planned / measured |", "|---|---|---|---|"]
    lines += [f"| {c['config']} | {c['planned_gib']:.1f} | {c['measured_gib']:.1f} | {c['ratio']:.2f} |" for c in check]
    (ROOT / "results" / "plan_published.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out} and plan_published.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
