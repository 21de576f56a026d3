"""One BATON training step and generation speed for every backend: TANGO, AudioLDM 2, Stable Audio Open, Stable Audio 3.

    python benchmarks/backend_step.py            # GPU: published sizes, random weights, batch 6, bf16
    python benchmarks/backend_step.py --quick    # CPU: the tiny test models, proves every code path
    python benchmarks/backend_step.py --full --batch 2 --seconds 1 --steps 1   # CPU smoke test of the published sizes

The step is the product's own: `DiffusionTrainer.training_loss` (Eq. 7, the model's own
objective and timestep distribution, half the batch feedback and half the pretrain term), backward
and the AdamW step, without the latent cache (so the frozen encoders run every step, as on a first
epoch), for full fine-tuning and for LoRA (rank 8). Generation is `backend.generate` of one clip per
caption, one generator per clip. Published sizes are built from the configs of the released
checkpoints (TANGO: the repo's `tango_configs`; AudioLDM 2: `cvssp/audioldm2`; Stable Audio Open:
`stabilityai/stable-audio-open-1.0`, which are diffusers' class defaults; Stable Audio 3 Medium:
diffusers' StableAudio3DiTModel defaults, SAME-L as diffusers documents it, and a T5Gemma encoder of
base width, 768 x 12 layers) with random weights:
nothing is downloaded. Peak memory is `torch.cuda.max_memory_allocated` per configuration on a GPU,
the process's peak RSS on a CPU. Ratios are against full fine-tuning of the same backend and against
TANGO, both measured in this run. Writes `benchmarks/results/backend_step_<device>[_quick].json`.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from tango_step import CAPTIONS, FLAN_T5_LARGE, build_frozen, device_name, free, library_versions, sync, write_results  # noqa: E402

BACKENDS = ("tango", "audioldm2", "stable_audio", "stable_audio_3")
# cvssp/audioldm2's unet/config.json and vae/config.json (the Hub files, values copied as data).
AUDIOLDM2_UNET = dict(
    sample_size=256,
    in_channels=8,
    out_channels=8,
    block_out_channels=(128, 256, 384, 640),
    layers_per_block=2,
    attention_head_dim=8,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=([None, 768, 1024],) * 4,
    norm_num_groups=32,
)
AUDIOLDM2_VAE = dict(
    in_channels=1,
    out_channels=1,
    block_out_channels=(128, 256, 512),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    latent_channels=8,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.4110932946205139,
)
T5_BASE = dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12, pad_token_id=0, eos_token_id=1)


def tango_full(device):
    from diffusers import UNet2DConditionModel

    from baton_trainer.backends.tango_original import CONFIG_DIR

    model = build_frozen(device, torch.float32)
    with torch.device(device):
        model.denoiser = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(CONFIG_DIR / "diffusion_model_config.json")))
    return model


def audioldm2_full(device):
    from diffusers import AudioLDM2Pipeline, AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel, AutoencoderKL, DDIMScheduler
    from transformers import ClapConfig, ClapModel, GPT2Config, GPT2LMHeadModel, SpeechT5HifiGan, SpeechT5HifiGanConfig, T5Config, T5EncoderModel

    from baton_trainer.backends.audioldm2 import AudioLDM2Model
    from baton_trainer.backends.tango_original import CONFIG_DIR
    from baton_trainer.clap import clap_feature_extractor
    from baton_trainer.testing import tiny_audioldm2
    from baton_trainer.tiny_parts import tiny_t5_tokenizer

    tokenizer = tiny_audioldm2().pipe.tokenizer  # token ids only need to be valid for the vocabularies
    with torch.device(device):
        gpt2 = GPT2LMHeadModel(GPT2Config())  # gpt2 base, as AudioLDM 2's language model
        gpt2.config.max_new_tokens = 8
        pipe = AudioLDM2Pipeline(
            vae=AutoencoderKL(**AUDIOLDM2_VAE),
            text_encoder=ClapModel(ClapConfig()),
            text_encoder_2=T5EncoderModel(T5Config(**FLAN_T5_LARGE)),
            projection_model=AudioLDM2ProjectionModel(text_encoder_dim=512, text_encoder_1_dim=1024, langauge_model_dim=768),
            language_model=gpt2,
            tokenizer=tokenizer,
            tokenizer_2=tiny_t5_tokenizer(model_max_length=512),
            feature_extractor=clap_feature_extractor(),
            unet=AudioLDM2UNet2DConditionModel(**AUDIOLDM2_UNET),
            scheduler=DDIMScheduler(
                beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1
            ),
            vocoder=SpeechT5HifiGan(SpeechT5HifiGanConfig(**json.loads((CONFIG_DIR / "vocoder_config.json").read_text()))),
        )
    return AudioLDM2Model(pipe)


def stable_audio_full(device):
    from diffusers import AutoencoderOobleck, CosineDPMSolverMultistepScheduler, StableAudioDiTModel, StableAudioPipeline, StableAudioProjectionModel
    from transformers import T5Config, T5EncoderModel

    from baton_trainer.backends.stable_audio import StableAudioModel
    from baton_trainer.tiny_parts import tiny_t5_tokenizer

    # the scheduler outside the device block: it keeps its sigmas on the CPU, which a meta device (the planner's) cannot copy
    scheduler = CosineDPMSolverMultistepScheduler(
        sigma_min=0.3, sigma_max=500, sigma_data=1.0, sigma_schedule="exponential", solver_order=2, prediction_type="v_prediction"
    )
    with torch.device(device):
        pipe = StableAudioPipeline(
            vae=AutoencoderOobleck(),
            text_encoder=T5EncoderModel(T5Config(**T5_BASE)),
            projection_model=StableAudioProjectionModel(text_encoder_dim=768, conditioning_dim=768, min_value=0, max_value=512),
            tokenizer=tiny_t5_tokenizer(model_max_length=128),
            transformer=StableAudioDiTModel(),
            scheduler=scheduler,
        )
    return StableAudioModel(pipe)


def stable_audio_3_full(device):
    from diffusers import AutoencoderSAME, FlowMatchEulerDiscreteScheduler, StableAudio3DiTModel, StableAudio3Pipeline
    from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import StableAudio3DurationEmbedder
    from transformers import T5GemmaConfig, T5GemmaEncoderModel

    from baton_trainer.backends.stable_audio_3 import StableAudio3Model
    from baton_trainer.tiny_parts import tiny_tokenizer

    tokenizer = tiny_tokenizer(model_max_length=256)  # token ids only need to be valid for the vocabulary
    module = dict(
        vocab_size=256000,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        head_dim=64,
        query_pre_attn_scalar=64,
    )
    with torch.device(device):
        pipe = StableAudio3Pipeline(
            vae=AutoencoderSAME(encoder_channels=256, encoder_transformer_depths=(12,)),
            text_encoder=T5GemmaEncoderModel(T5GemmaConfig(encoder=module, decoder=module, is_encoder_decoder=False)),
            tokenizer=tokenizer,
            duration_embedder=StableAudio3DurationEmbedder(),
            transformer=StableAudio3DiTModel(),
            scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0),
        )
    return StableAudio3Model(pipe)


def build(name: str, quick: bool, device):
    from baton_trainer import testing

    if quick:
        return {
            "tango": testing.tiny_tango,
            "audioldm2": testing.tiny_audioldm2,
            "stable_audio": testing.tiny_stable_audio,
            "stable_audio_3": testing.tiny_stable_audio_3,
        }[name]()
    return {"tango": tango_full, "audioldm2": audioldm2_full, "stable_audio": stable_audio_full, "stable_audio_3": stable_audio_3_full}[name](device)


def run(name: str, lora: bool, args, device) -> dict:
    from baton_trainer.latent_cache import EncodedSet
    from baton_trainer.stages.finetune import FinetuneConfig
    from baton_trainer.trainer import DiffusionTrainer

    free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    backend = build(name, args.quick, device)
    seconds = args.seconds or min(0.32 if args.quick else 10.0, backend.duration_s)  # the tiny models are 0.32 s models
    half = args.batch // 2
    with tempfile.TemporaryDirectory() as tmp:
        config = FinetuneConfig(
            run_dir=tmp,
            model=name,
            use_lora=lora,
            lora_rank=8,
            train_batch_size=half,
            pretrain_batch_size=args.batch - half,
            report_to="none",
            cache_embeddings=False,
            mixed_precision="bf16" if device.type == "cuda" else "no",
            duration_s=seconds,
        )
        trainer = DiffusionTrainer(config, backend=backend)
        samples = int(round(seconds * backend.sample_rate))
        data = lambda n, s: EncodedSet(
            [CAPTIONS[i % len(CAPTIONS)] for i in range(n)], torch.rand(n), waveforms=0.1 * torch.randn(n, samples, generator=torch.Generator().manual_seed(s))
        )  # noqa: E731
        feedback, pretrain = data(half, 0), data(args.batch - half, 1)
        times = []
        try:
            for step in range(1 + args.steps):
                sync(device)
                t0 = time.perf_counter()
                loss, _ = trainer.training_loss(feedback, pretrain, step, 0)
                trainer.accelerator.backward(loss)
                trainer.optimizer.step()
                trainer.optimizer.zero_grad(set_to_none=True)
                sync(device)
                if step > 0:  # the first step is warm-up (allocator, kernels, optimizer states)
                    times.append(time.perf_counter() - t0)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            result = {
                "backend": name,
                "mode": "lora" if lora else "full",
                "seconds": seconds,
                "trainable_params": sum(p.numel() for p in trainer.trainable_params),
                "denoiser_params": sum(p.numel() for n, p in backend.denoiser.named_parameters() if "lora_" not in n),
                "step_time_s": statistics.median(times),
                "step_times_s": times,
                "peak_memory_gib": peak,
                "final_loss": loss.item(),
            }
            if not lora or "full" not in args.modes:  # generation speed once per backend, with the base denoiser
                backend.denoiser.eval()
                captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(args.batch)]
                backend.generate(captions[:1], [0], num_inference_steps=1, guidance_scale=3.0, duration_s=seconds)  # warm-up
                sync(device)
                t0 = time.perf_counter()
                backend.generate(captions, list(range(args.batch)), num_inference_steps=args.gen_steps, guidance_scale=3.0, duration_s=seconds)
                sync(device)
                result["generation_clips_per_s"] = args.batch / (time.perf_counter() - t0)
                result["generation_steps"] = args.gen_steps
        except torch.OutOfMemoryError:
            result = {"backend": name, "mode": "lora" if lora else "full", "error": "out of memory"}
    del trainer, backend
    free(device)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny test models (the CPU default)")
    parser.add_argument("--full", action="store_true", help="published sizes even on a CPU (slow; needs ~20 GB)")
    parser.add_argument("--batch", type=int, default=6, help="clips per step: half feedback, half pretrain (the paper's 6)")
    parser.add_argument("--seconds", type=float, default=None, help="clip length (default 10 s, 0.32 s with --quick, or the model's window when shorter)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps after one warm-up (default 5; 2 with --quick)")
    parser.add_argument("--gen_steps", type=int, default=None, help="sampling steps for the generation speed (default 50; 4 with --quick)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated subset of {list(BACKENDS)}")
    parser.add_argument("--modes", default="full,lora", help="comma-separated subset of full,lora")
    parser.add_argument("--out_dir", default=str(ROOT / "results"))
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.quick = args.quick or (device.type == "cpu" and not args.full)
    args.steps = args.steps or (2 if args.quick else 5)
    args.gen_steps = args.gen_steps or (4 if args.quick else 50)
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    if any(n not in BACKENDS for n in names):
        parser.error(f"unknown backend in {names} (known: {', '.join(BACKENDS)})")
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    print(
        f"device {device_name(device)}; {'tiny test models' if args.quick else 'published sizes'}; batch {args.batch}; "
        f"{args.steps} timed step(s) after 1 warm-up",
        flush=True,
    )

    began = time.perf_counter()
    results = []
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in ("full", "lora") for m in modes):
        parser.error(f"unknown mode in {modes} (known: full, lora)")
    for name in names:
        for lora in [m == "lora" for m in modes]:
            t0 = time.perf_counter()
            results.append(run(name, lora, args, device))
            print(f"  {name} {'lora' if lora else 'full'}: done in {time.perf_counter() - t0:.1f} s", flush=True)

    ok = {(r["backend"], r["mode"]): r for r in results if "error" not in r}
    for r in ok.values():
        full, tango = ok.get((r["backend"], "full")), ok.get(("tango", r["mode"]))
        if full:
            r["time_ratio_vs_full"] = r["step_time_s"] / full["step_time_s"]
        if tango:
            r["time_ratio_vs_tango"] = r["step_time_s"] / tango["step_time_s"]

    print(f"\n{'backend':<15} {'mode':<5} {'trainable':>13} {'step s':>8} {'x full':>7} {'x tango':>8} {'peak GiB':>9} {'clips/s':>8}")
    for r in results:
        if "error" in r:
            print(f"{r['backend']:<15} {r['mode']:<5} {r['error']}")
            continue
        gen = f"{r['generation_clips_per_s']:.2f}" if "generation_clips_per_s" in r else ""
        print(
            f"{r['backend']:<15} {r['mode']:<5} {r['trainable_params']:>13,} {r['step_time_s']:>8.3f} {r.get('time_ratio_vs_full', float('nan')):>7.2f} "
            f"{r.get('time_ratio_vs_tango', float('nan')):>8.2f} {r['peak_memory_gib']:>9.2f} {gen:>8}"
        )

    report = {
        "device": device_name(device),
        "quick": args.quick,
        "batch": args.batch,
        "timed_steps": args.steps,
        "precision": "bf16 autocast, frozen parts bf16" if device.type == "cuda" else "fp32",
        "peak_memory": "torch.cuda.max_memory_allocated per configuration" if device.type == "cuda" else "process peak RSS (monotonic over the run)",
        "versions": library_versions(),
        "results": results,
        "total_time_s": time.perf_counter() - began,
    }
    out = write_results(report, args.out_dir, "backend_step", device, "_quick" if args.quick else "")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
