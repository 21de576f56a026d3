"""One BATON training step on TANGO's real architecture: memory and time, full fine-tuning vs LoRA.

    python benchmarks/tango_step.py            # GPU: the paper's batch 6, 10.24 s latents (8, 256, 16)
    python benchmarks/tango_step.py --quick    # CPU: batch 2, short latents, proves the code path

Builds TANGO from the configs kept in the repo with random weights (nothing is downloaded): the
UNet from `tango_configs/diffusion_model_config.json` (~866M parameters), a T5 encoder of
flan-t5-large's size from a `T5Config`, the AudioLDM VAE and HiFi-GAN at their real sizes. A step is
what the BATON trainer does without cached latents: frozen VAE + T5 (bf16) encode audio and text,
then the UNet's forward + backward under bf16 autocast with the Eq. 7 loss from
`baton_trainer.losses` (half the batch weighted feedback, half the pretrain term), and an AdamW
step. Each configuration runs one warm-up step and a few timed steps; peak memory is
`torch.cuda.max_memory_allocated` (reset between configurations, frozen encoders included).
Writes `benchmarks/results/tango_step_<device>.json` and prints a table with ratios against full
fine-tuning measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
CONFIGS = {
    "full": {"lora": False, "gradient_checkpointing": False},
    "full+gc": {"lora": False, "gradient_checkpointing": True},
    "lora": {"lora": True, "gradient_checkpointing": False},
    "lora+gc": {"lora": True, "gradient_checkpointing": True},
}
# TANGO's AudioLDM VAE (its vae_config.json) and flan-t5-large's encoder.
TANGO_VAE = {
    "embed_dim": 8,
    "subband": 1,
    "scale_factor": 0.9227914214134216,
    "ddconfig": {
        "double_z": True,
        "z_channels": 8,
        "resolution": 256,
        "in_channels": 1,
        "out_ch": 1,
        "ch": 128,
        "ch_mult": [1, 2, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
    },
}
FLAN_T5_LARGE = dict(
    vocab_size=32128,
    d_model=1024,
    d_kv=64,
    d_ff=2816,
    num_layers=24,
    num_heads=16,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
    pad_token_id=0,
    eos_token_id=1,
)
CAPTIONS = [
    "a dog barks and then birds chirp",
    "rain falls while engine hums",
    "siren followed by wind",
    "people talk with music in the background",
    "baby cries then water hiss",
    "beep and click",
]


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def library_versions() -> dict:
    """The versions a results file records."""
    import diffusers
    import peft
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "cuda": torch.version.cuda,
    }


def write_results(report: dict, out_dir: str | Path, stem: str, device: torch.device, suffix: str = "") -> Path:
    """`report` as `<out_dir>/<stem>_<device><suffix>.json`."""
    out = Path(out_dir) / f"{stem}_{re.sub(r'[^A-Za-z0-9]+', '_', device_name(device)).strip('_')}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build_frozen(device: torch.device, dtype: torch.dtype):
    """TangoModel without a UNet yet: VAE, T5 encoder, vocoder, tokenizer, scheduler at real sizes."""
    from diffusers import AutoencoderKL
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig, T5Config, T5EncoderModel

    from baton_trainer.backends.pipeline_tango import TangoPipeline
    from baton_trainer.backends.tango import TangoModel
    from baton_trainer.backends.tango_original import CONFIG_DIR, _load_scheduler, vae_config_to_diffusers
    from baton_trainer.tiny_parts import TINY_WORDS, tiny_tokenizer

    with torch.device(device):
        vae = AutoencoderKL.from_config(vae_config_to_diffusers(TANGO_VAE))
        text_encoder = T5EncoderModel(T5Config(**FLAN_T5_LARGE))
        vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**json.loads((CONFIG_DIR / "vocoder_config.json").read_text())))
    # Token ids only need to be valid for T5's vocabulary; no tokenizer download.
    tokenizer = tiny_tokenizer(TINY_WORDS, model_max_length=512)
    model = TangoModel(
        TangoPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=None, scheduler=_load_scheduler(Path("."), None), vocoder=vocoder)
    )
    for module in (vae, text_encoder, vocoder):
        module.requires_grad_(False).eval().to(device=device, dtype=dtype)
    model.mel.to(device)
    return model


def build_unet(device: torch.device, lora: bool, rank: int, frozen_dtype: torch.dtype, gradient_checkpointing: bool):
    from diffusers import UNet2DConditionModel

    from baton_trainer.backends.tango_original import CONFIG_DIR

    config = UNet2DConditionModel.load_config(str(CONFIG_DIR / "diffusion_model_config.json"))
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(config)
    if lora:
        from peft import LoraConfig

        # As diffusers' LoRA scripts: frozen base in half precision, adapter weights in fp32.
        unet.requires_grad_(False).to(dtype=frozen_dtype)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        for p in unet.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    return unet


def training_step(model, unet, optimizer, waveforms, captions, frames, autocast_dtype, device):
    from baton_trainer.losses import baton_loss, denoising_target, snr_weights

    scheduler = model.noise_scheduler
    with torch.no_grad():
        z0 = model.encode_audio(waveforms, num_frames=frames).float()
        cond = model.encode_text(captions)
    batch = z0.shape[0]
    noise = torch.randn_like(z0)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=device)
    noisy = scheduler.add_noise(z0, noise, timesteps)
    target = denoising_target(scheduler, z0, noise, timesteps)
    weights = snr_weights(scheduler, timesteps, gamma=5.0, mode="tango")
    with torch.autocast(device.type, dtype=autocast_dtype):
        pred = unet(noisy, timesteps, **cond.to(dtype=autocast_dtype).as_kwargs()).sample
    n_fb = max(1, batch // 2)  # first half: feedback clips with reward weights; rest: the pretrain term
    rewards = torch.linspace(0.0, 1.0, n_fb, device=device)
    loss, logs = baton_loss(
        pred[:n_fb],
        target[:n_fb],
        rewards,
        pred_pt=pred[n_fb:] if batch > n_fb else None,
        target_pt=target[n_fb:] if batch > n_fb else None,
        pretrain_weight=0.5,
        snr_fb=weights[:n_fb],
        snr_pt=weights[n_fb:] if batch > n_fb else None,
    )
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return logs["loss"]


def run_config(name, spec, model, args, device, frames, waveforms, captions):
    free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start_mem = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    unet = build_unet(device, spec["lora"], args.lora_rank, torch.bfloat16, spec["gradient_checkpointing"])
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=1e-2, fused=device.type == "cuda")
    times, losses = [], []
    try:
        for step in range(1 + args.steps):
            sync(device)
            t0 = time.perf_counter()
            losses.append(training_step(model, unet, optimizer, waveforms, captions, frames, torch.bfloat16, device))
            sync(device)
            if step > 0:  # the first step is warm-up (allocator, kernels, optimizer states)
                times.append(time.perf_counter() - t0)
        result = {
            "config": name,
            **spec,
            "lora_rank": args.lora_rank if spec["lora"] else None,
            "trainable_params": sum(p.numel() for p in params),
            "step_time_s": statistics.median(times),  # median: single steps vary with t and the allocator
            "step_time_mean_s": statistics.mean(times),
            "step_times_s": times,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "frozen_memory_gib": start_mem / 2**30 if device.type == "cuda" else None,
            "final_loss": losses[-1],
        }
    except torch.OutOfMemoryError:
        result = {"config": name, **spec, "error": "out of memory"}
    del unet, optimizer, params
    free(device)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced batch and latent length (the CPU default)")
    parser.add_argument("--batch", type=int, default=None, help="clips per step (default 6; 2 with --quick)")
    parser.add_argument("--seconds", type=float, default=None, help="audio length (default 10.24 s -> latents (8, 256, 16); 0.64 s with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps after one warm-up (default 5; 1 with --quick)")
    parser.add_argument("--lora_rank", type=int, default=8)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {list(CONFIGS)}")
    parser.add_argument("--out_dir", default=str(ROOT / "results"))
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    quick = args.quick or device.type == "cpu"
    args.batch = args.batch or (2 if quick else 6)
    args.seconds = args.seconds or (0.64 if quick else 10.24)
    args.steps = args.steps or (1 if quick else 5)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown config '{unknown[0]}' (known: {', '.join(CONFIGS)})")
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    began = time.perf_counter()
    model = build_frozen(device, torch.bfloat16)
    # Mel frames must divide by the VAE's (4) and the UNet's (8) downsampling: TangoModel.num_frames.
    frames = math.ceil(args.seconds * model.sample_rate / model.mel_config.hop_length / 32) * 32
    samples = frames * model.mel_config.hop_length
    waveforms = 0.1 * torch.randn(args.batch, samples, device=device)
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(args.batch)]
    latent_shape = [8, frames // 4, model.mel_config.n_mels // 4]
    print(
        f"device {device_name(device)}; batch {args.batch}; {args.seconds} s -> latents {tuple(latent_shape)}; {args.steps} timed step(s) after 1 warm-up",
        flush=True,
    )

    results = []
    for name in names:
        t0 = time.perf_counter()
        results.append(run_config(name, CONFIGS[name], model, args, device, frames, waveforms, captions))
        print(f"  {name}: done in {time.perf_counter() - t0:.1f} s", flush=True)

    base = next((r for r in results if r["config"] == "full" and "error" not in r), None)
    for r in results:
        if base and "error" not in r:
            r["time_ratio_vs_full"] = r["step_time_s"] / base["step_time_s"]
            if base["peak_memory_gib"]:
                r["memory_ratio_vs_full"] = r["peak_memory_gib"] / base["peak_memory_gib"]

    unet_params = 865_933_768  # from the kept config; checked in tests
    print()
    print(f"{'config':<10} {'trainable':>12} {'median s':>9} {'x full':>7} {'peak GiB':>9} {'x full':>7}")
    for r in results:
        if "error" in r:
            print(f"{r['config']:<10} {r['error']}")
            continue
        mem = f"{r['peak_memory_gib']:.2f}" if r["peak_memory_gib"] is not None else "n/a"
        mem_ratio = f"{r['memory_ratio_vs_full']:.2f}" if "memory_ratio_vs_full" in r else "n/a"
        ratio = f"{r['time_ratio_vs_full']:.2f}" if "time_ratio_vs_full" in r else "n/a"
        print(f"{r['config']:<10} {r['trainable_params']:>12,} {r['step_time_s']:>9.3f} {ratio:>7} {mem:>9} {mem_ratio:>7}")

    report = {
        "device": device_name(device),
        "quick": quick,
        "batch": args.batch,
        "seconds": args.seconds,
        "latent_shape": latent_shape,
        "timed_steps": args.steps,
        "autocast": "bf16",
        "frozen_dtype": "bf16",
        "optimizer": "AdamW" + (" (fused)" if device.type == "cuda" else ""),
        "unet_params": unet_params,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "versions": library_versions(),
        "results": results,
        "total_time_s": time.perf_counter() - began,
    }
    out = write_results(report, args.out_dir, "tango_step", device)
    print(f"\nwrote {out} (total {report['total_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
