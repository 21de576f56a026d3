"""The GPU benchmarks in one run, for the day a GPU is lent: <= 10 minutes on one H100 or H200.

    bash benchmarks/gpu/run.sh            # a GPU: TANGO at its real sizes, random weights (nothing downloaded)
    bash benchmarks/gpu/run.sh --tiny     # CPU: the toy TANGO through the same code (the test suite runs this)

Four parts, each through the trainer and pipeline users run, in bf16 (`--tiny`: the sampling part in fp32):

1. **Fine-tuning step** (full and LoRA): for growing batches until one does not fit, the mean
   step time and `torch.cuda.max_memory_allocated`, the planner's estimate beside it
   (`baton_trainer.planning`), and MFU: the denoiser's forward + backward FLOPs (counted by
   `torch.utils.flop_counter` on a meta-device copy built from the model config, LoRA's frozen
   weight gradients left out as the step leaves them out) over the step time and the GPU's dense
   bf16 peak.
2. **Sampling throughput**: the pipeline's loop (the guidance halves in one denoiser call) against
   the same loop with the conditional and unconditional passes as two calls, same seeds and
   steps, and the latents' largest difference between the two.
3. **An online step** (grpo, groups of 4, the toy BATON reward): rollout, reward and update seconds
   (`benchmarks/online_step.py`'s `step_times`).
4. **The engines**: the toy TANGO fine-tuned for a few steps under each shipped accelerate config
   (one process: DDP, FSDP, DeepSpeed ZeRO-2 and ZeRO-3 where deepspeed is installed), through
   `accelerate launch -m baton_trainer finetune`; each export is loaded and its weights compared
   with the DDP run's. accelerate runs FSDP and DeepSpeed on GPUs only: `--tiny` runs the CPU config.

Writes `benchmarks/results/gpu_<device>.json` (`--out_dir`) and prints each part as it finishes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCHMARKS))  # the sibling benchmarks' helpers (tango_step, online_step)

from online_step import step_times  # noqa: E402
from tango_step import CAPTIONS, build_frozen, device_name, free, library_versions, sync, write_results  # noqa: E402

# Dense bf16 tensor-core peaks in TFLOP/s, from NVIDIA's datasheets (H100 and H200 SXM: 989.4; H100 PCIe: 756; A100: 312).
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}


def peak_tflops(device: torch.device) -> float | None:
    name = device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def tango(device: torch.device, tiny: bool):
    """A TANGO backend: the shipped toy TANGO (tiny), or TANGO's real sizes with random weights."""
    if tiny:
        from baton_trainer.backends import load_backend
        from baton_trainer.toyworld.models import TOY_TANGO_PATH

        return load_backend(TOY_TANGO_PATH, device=device)
    from diffusers import UNet2DConditionModel

    from baton_trainer.backends.tango_original import CONFIG_DIR

    model = build_frozen(device, torch.bfloat16)
    with torch.device(device):
        model.denoiser = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(CONFIG_DIR / "diffusion_model_config.json")))
    return model


def finetune_config(root: Path, **overrides):
    from baton_trainer.stages.finetune import FinetuneConfig

    values = dict(
        model="tango (random weights)",
        run_dir=str(root),
        output_dir=str(root / "out"),
        feedback_dataset="none",
        reward_dataset="none",
        mixed_precision="bf16",
        report_to="none",
        lora_rank=8,
        checkpointing_steps=10**6,
    )
    return FinetuneConfig(**{**values, **overrides})


def step_flops(trainer, batch) -> int:
    """FLOPs of the denoiser's forward + backward on `batch`, counted on a meta-device copy of its
    architecture (shapes only: the config decides the count, not the precision)."""
    from torch.utils.flop_counter import FlopCounterMode

    denoiser = trainer.accelerator.unwrap_model(trainer.denoiser)
    with torch.device("meta"):  # from the config, not a copy: no second model in GPU memory
        twin = type(denoiser).from_config(denoiser.config)
    if getattr(denoiser, "peft_config", None):
        from peft import inject_adapter_in_model

        twin.requires_grad_(False)
        inject_adapter_in_model(denoiser.peft_config["default"], twin)
    noisy = torch.zeros_like(batch.latents, device="meta")
    text = {k: torch.zeros_like(v, device="meta", dtype=torch.float32 if v.is_floating_point() else v.dtype) for k, v in batch.text.as_kwargs().items()}
    t = torch.zeros(noisy.shape[0], dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        twin(noisy, t, **text).sample.pow(2).mean().backward()
    return counter.get_total_flops()


def encoded_batch(backend, clips: int, device: torch.device):
    from baton_trainer.latent_cache import EncodedSet

    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(clips)]
    samples = int(round(backend.duration_s * backend.sample_rate))
    with torch.no_grad():
        waveforms = 0.1 * torch.randn(clips, samples, generator=torch.Generator().manual_seed(0)).to(device)
        return EncodedSet(captions, torch.linspace(0, 1, clips), backend.encode_audio(waveforms).float(), backend.encode_text(captions, backend.duration_s))


def finetune_part(device: torch.device, tiny: bool, root: Path, steps: int) -> list[dict]:
    """Step time, peak memory, planned memory and MFU of full and LoRA fine-tuning at growing batches."""
    from baton_trainer.planning import WeightlessModel, estimate, save_configs
    from baton_trainer.trainer import DiffusionTrainer

    batches = (2, 4) if tiny else (6, 12, 24, 48)
    peak = peak_tflops(device)
    planner = WeightlessModel(str(save_configs(tango(device, tiny), root / "configs")))
    rows = []
    for mode in ("full", "lora"):
        for clips in batches:
            free(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                config = finetune_config(root / f"{mode}{clips}", use_lora=mode == "lora", train_batch_size=clips)
                trainer = DiffusionTrainer(config, backend=tango(device, tiny))
                batch = encoded_batch(trainer.backend, clips, device)
                seconds = step_times(trainer, batch, steps)["total"]  # mean over the steps after a warm-up one
            except torch.OutOfMemoryError:
                rows.append({"mode": mode, "batch": clips, "error": "out of memory"})
                print(f"  {mode} batch {clips}: out of memory", flush=True)
                break
            flops = step_flops(trainer, batch)
            row = {
                "mode": mode,
                "batch": clips,
                "step_time_s": seconds,
                "clips_per_s": clips / seconds,
                "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                "planned_memory_gib": estimate(planner, config, mode, "baton").total / 2**30,
                "trained_parameters": sum(p.numel() for p in trainer.trainable_params),
                "flops_per_step": flops,
                "mfu": flops / seconds / (peak * 1e12) if peak else None,
            }
            print(f"  {mode} batch {clips}: {seconds:.3f} s/step, {row['clips_per_s']:.1f} clips/s, MFU {row['mfu']}", flush=True)
            rows.append(row)
            del trainer, batch
            if seconds > 10:
                break
    return rows


def sampling_part(device: torch.device, tiny: bool, steps: int) -> dict:
    """Clips per second of the pipeline's sampling loop, with the guidance halves in one call and in two."""
    backend = tango(device, tiny)
    # bf16 on a GPU, as users sample; fp32 at tiny size on CPU, where the comparison of the two loops
    # must not depend on how this CPU's bf16 kernels round a batch of another shape
    backend.to(dtype=torch.float32 if tiny else torch.bfloat16)
    pipe = backend.pipe
    clips = 4 if tiny else 16
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(clips)]

    def two_calls(latents, t, hidden, mask, uncond_hidden, uncond_mask, guidance_scale):
        uncond = pipe.unet(latents, t, encoder_hidden_states=uncond_hidden, encoder_attention_mask=uncond_mask).sample
        cond = pipe.unet(latents, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
        return uncond + guidance_scale * (cond - uncond)

    def sample() -> tuple[float, torch.Tensor]:
        generators = [torch.Generator().manual_seed(i) for i in range(clips)]
        sync(device)
        started = time.perf_counter()
        latents = pipe(captions, num_inference_steps=steps, guidance_scale=3.0, generator=generators, output_type="latent").audios
        sync(device)
        return time.perf_counter() - started, latents.float()

    pipe.set_progress_bar_config(disable=True)
    sample()  # warm-up
    one_call_s, one_call = sample()
    pipe.denoise = two_calls  # the same loop, the two guidance passes as two calls
    sample()
    two_calls_s, two = sample()
    del pipe.denoise
    return {
        "clips": clips,
        "steps": steps,
        "one_call_clips_per_s": clips / one_call_s,
        "two_calls_clips_per_s": clips / two_calls_s,
        "speedup": two_calls_s / one_call_s,
        "largest_latent_difference": (one_call - two).abs().max().item(),
    }


def online_part(device: torch.device, tiny: bool, root: Path, steps: int) -> dict:
    """One grpo step's rollout, reward and update seconds, and its peak memory."""
    from baton_trainer.stages.finetune import load_training_data
    from baton_trainer.testing import save_synthetic_ratings
    from baton_trainer.toyworld.models import PRETRAINED_DIR
    from baton_trainer.trainer import DiffusionTrainer

    free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    captions, group = (2, 2) if tiny else (4, 4)
    save_synthetic_ratings(root / "feedback", n_captions=8, clips_per_caption=4)
    config = finetune_config(
        root / "online",
        objective="grpo",
        feedback_dataset=str(root / "feedback"),
        rewards=[{"name": "baton", "model": str(PRETRAINED_DIR / "toy_reward")}],
        group_size=group,
        rollout_captions=captions,
        rollout_steps=4 if tiny else 10,
        use_lora=True,
        cache_dir=str(root / "online_cache"),
    )
    trainer = DiffusionTrainer(config, backend=tango(device, tiny))
    data, _ = load_training_data(trainer.config, trainer.objective, trainer.latent_cache)
    seconds = step_times(trainer, data, steps)
    return {
        "objective": "grpo",
        "clips_per_step": captions * group,
        "rollout_steps": config.rollout_steps,
        "seconds": seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def engines_part(device: torch.device, root: Path) -> list[dict]:
    """Each shipped accelerate config on one process: exit status, seconds, and the export's largest
    weight difference from the first config's (DDP on a GPU, the CPU config with --tiny)."""
    import importlib.util
    import os
    import subprocess

    from safetensors.torch import load_file

    from baton_trainer.backends import load_backend
    from baton_trainer.testing import save_synthetic_ratings
    from baton_trainer.toyworld.models import TOY_TANGO_PATH

    configs = Path(__file__).resolve().parents[2] / "baton_trainer" / "configs" / "accelerate"
    names = ["ddp_2gpu", "fsdp_8gpu", "deepspeed_zero2", "deepspeed_zero3"] if device.type == "cuda" else ["cpu_2proc"]
    ratings = save_synthetic_ratings(root / "engine_ratings", n_captions=4, clips_per_caption=2)
    rows, reference = [], None
    for name in names:
        if name.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
            rows.append({"config": name, "error": "deepspeed is not installed (pip install deepspeed)"})
            continue
        out = root / f"engine_{name}"
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(configs / f"{name}.yaml"), "--num_processes", "1"]
        command += ["-m", "baton_trainer", "finetune", "--model", str(TOY_TANGO_PATH), "--run_dir", str(root / "engine_run"), "--output_dir", str(out)]
        command += ["--feedback_dataset", str(ratings), "--reward_dataset", "none", "--cache_dir", str(root / f"engine_cache_{name}")]
        command += ["--train_batch_size", "4", "--max_train_steps", "3", "--learning_rate", "1e-4", "--report_to", "none", "--seed", "0"]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=300)
        row = {"config": name, "returncode": result.returncode, "seconds": time.perf_counter() - started}
        if result.returncode:
            row["error"] = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "no output"
        else:
            weights = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
            reference = reference or weights
            row["largest_weight_difference"] = max((weights[k].float() - reference[k].float()).abs().max().item() for k in reference)
            clip = load_backend(TOY_TANGO_PATH, export=out).generate(["a dog barks"], [0], num_inference_steps=3, guidance_scale=3.0)
            row["export_loads_and_generates_finite_audio"] = bool(torch.isfinite(torch.from_numpy(clip)).all())
        print(f"  {row}", flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the toy TANGO on whatever device there is (CPU in the test suite)")
    parser.add_argument("--out_dir", default=str(BENCHMARKS / "results"))
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.tiny:
        parser.error("no GPU here: TANGO's real sizes need one (--tiny runs the toy TANGO on CPU)")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    began = time.perf_counter()
    report = {"device": device_name(device), "tiny": args.tiny, "peak_bf16_tflops": peak_tflops(device), "versions": library_versions()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"device {report['device']}: fine-tuning steps", flush=True)
        report["finetune"] = finetune_part(device, args.tiny, root, steps=1 if args.tiny else 3)
        print("sampling", flush=True)
        report["sampling"] = sampling_part(device, args.tiny, steps=3 if args.tiny else 50)
        print(f"  {report['sampling']}", flush=True)
        print("online step", flush=True)
        report["online"] = online_part(device, args.tiny, root, steps=1 if args.tiny else 2)
        print(f"  {report['online']}", flush=True)
        print("engines", flush=True)
        report["engines"] = engines_part(device, root)
    report["total_time_s"] = time.perf_counter() - began
    out = write_results(report, args.out_dir, "gpu", device, "_tiny" if args.tiny else "")
    print(f"wrote {out} ({report['total_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
