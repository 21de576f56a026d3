"""Pretrain the toy TANGO shipped in baton_trainer/toyworld/pretrained/toy_tango (seeded).

    python scripts/train_toy_tango.py --device cuda --out baton_trainer/toyworld/pretrained/toy_tango

1. render captioned toy clips (`toyworld.render.render_dataset`) in the loosely captioned world
   `PRETRAIN_WORLD`: some named events are missing and some 3-event clips ignore the order;
2. train the AutoencoderKL on their log-mels (TangoModel's own mel front end), on random crops
   (or keep the VAE of an earlier run with `--init-vae`);
3. teach the T5 encoder the toy language (which event each word names and its place among the
   caption's events), then keep it fixed, as TANGO keeps FLAN-T5 fixed;
4. encode every clip with `TangoModel.encode_audio` (the latents fine-tuning will see) and train
   the UNet with TANGO's v-prediction objective, dropping 10% of the captions for
   classifier-free guidance;
5. judge generations for held-out captions with the oracle and write training_report.json.

The base is meant to be imperfect as the paper's is: it reproduces its loose captions, so it
drops events and sometimes mixes up their order. `docs/toy_models.md` records the run times.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from baton_trainer.toyworld.pretraining import add_world_arguments, heldout_report, log, pretrain_text_encoder, render_pretraining_clips


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="baton_trainer/toyworld/pretrained/toy_tango")
    p.add_argument("--seed", type=int, default=0)
    add_world_arguments(p)
    p.add_argument("--unet-channels", default="32,64,96", help="UNet block widths; one level per entry")
    p.add_argument("--text-layers", type=int, default=2)
    p.add_argument(
        "--text-pretrain-steps", type=int, default=300, help="first teach the T5 encoder which event each word names and its place among the events (0: skip)"
    )
    p.add_argument(
        "--train-text-encoder", action="store_true", help="train the T5 encoder with the UNet (TANGO keeps it fixed; joint training loses event order)"
    )
    p.add_argument("--init-vae", default="", help="take the trained VAE of this toy TANGO folder and skip VAE training")
    p.add_argument("--vae-steps", type=int, default=900)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--vae-crop", type=int, default=64, help="mel frames per VAE training crop")
    p.add_argument("--unet-steps", type=int, default=4200)
    p.add_argument("--unet-batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-clips", type=int, default=400, help="held-out clips per task for the report (0: skip)")
    p.add_argument("--eval-steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--snapshots", default="", help="comma-separated UNet steps at which to save OUT-stepN and evaluate it")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the CPU is the reference; CUDA numbers differ slightly)")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def train_vae(model, mels: torch.Tensor, args) -> None:
    vae = model.vae
    vae.train()
    gen = torch.Generator().manual_seed(args.seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    frames = mels.shape[2]
    for step in range(args.vae_steps):
        index = torch.randint(0, len(mels), (args.vae_batch,), generator=gen)
        start = int(torch.randint(0, (frames - args.vae_crop) // 8 + 1, (1,), generator=gen)) * 8
        x = mels[index, :, start : start + args.vae_crop].to(args.device)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(args.device)
        recon = vae.decode(z).sample
        rec_loss = (recon - x).abs().mean() + (recon - x).pow(2).mean()
        kl = posterior.kl().mean() / x[0].numel()
        loss = rec_loss + 1e-3 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        for group in opt.param_groups:
            group["lr"] = 1e-3 * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.vae_steps)))
        opt.step()
        if step % 25 == 0 or step == args.vae_steps - 1:
            log(f"vae step {step + 1}/{args.vae_steps}: reconstruction {rec_loss.item():.4f} kl/dim {kl.item():.4f}")
    vae.eval()


def train_unet(model, latents: torch.Tensor, captions: list[str], args, on_step=None) -> None:
    from baton_trainer.losses import denoising_target, snr_weights

    unet, text_encoder, scheduler = model.denoiser, model.text_encoder, model.noise_scheduler
    unet.train()
    text_encoder.train(args.train_text_encoder)
    text_encoder.requires_grad_(args.train_text_encoder)
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if args.train_text_encoder else [])
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(args.seed + 2)
    tokenizer = model.tokenizer
    for step in range(args.unet_steps):
        index = torch.randint(0, len(latents), (args.unet_batch,), generator=gen)
        drop = torch.rand(args.unet_batch, generator=gen) < 0.1  # classifier-free guidance
        batch_captions = ["" if d else captions[i] for i, d in zip(index.tolist(), drop.tolist())]
        tokens = tokenizer(batch_captions, max_length=model.pipe.config.text_max_length, padding=True, truncation=True, return_tensors="pt")
        z0 = latents[index]
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.unet_batch,), generator=gen)
        device = next(unet.parameters()).device
        z0, noise, t, tokens = z0.to(device), noise.to(device), t.to(device), tokens.to(device)
        hidden = text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        noisy = scheduler.add_noise(z0, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=hidden, encoder_attention_mask=tokens.attention_mask == 1).sample
        target = denoising_target(scheduler, z0, noise, t)
        mse = (pred - target).pow(2).flatten(1).mean(1)
        loss = (mse * snr_weights(scheduler, t, 5.0, "tango")).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in opt.param_groups:
            # Constant after warm-up: a snapshot at step k is the model a k-step run ends with.
            group["lr"] = args.lr * min(1.0, (step + 1) / 100)
        opt.step()
        if step % 25 == 0 or step == args.unet_steps - 1:
            log(f"unet step {step + 1}/{args.unet_steps}: loss {loss.item():.4f}")
        if on_step is not None:
            on_step(step + 1)
    unet.eval()
    text_encoder.eval()


def evaluate(model, n: int, args) -> dict:
    return heldout_report(model, n, args.seed, args.eval_steps, args.guidance)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from baton_trainer.toyworld.models import TOY_DURATION_S, build_toy_tango

    out = Path(args.out)
    started = time.time()
    timings = {}
    data = render_pretraining_clips(args, TOY_DURATION_S)
    timings["render_s"] = round(time.time() - started, 1)

    channels = tuple(int(x) for x in args.unet_channels.split(","))
    model = build_toy_tango(args.seed, unet_channels=channels, text_layers=args.text_layers)
    if args.init_vae:
        from diffusers import AutoencoderKL

        model.vae = AutoencoderKL.from_pretrained(Path(args.init_vae) / "vae")
        args.vae_steps = 0
    model.to(args.device)
    waveforms = torch.from_numpy(data["audio"])
    mels = torch.cat([model.waveform_to_mel(waveforms[i : i + 256]).cpu() for i in range(0, len(waveforms), 256)])
    log(f"mels {tuple(mels.shape)}, range {mels.min().item():.2f}..{mels.max().item():.2f}")

    t0 = time.time()
    if args.vae_steps:
        train_vae(model, mels, args)
    model.vae.eval()
    timings["vae_s"] = round(time.time() - t0, 1)
    with torch.no_grad():
        sample = mels[:256].to(args.device)
        recon = model.vae.decode(model.vae.encode(sample).latent_dist.mean).sample
        vae_mae = (recon - sample).abs().mean().item()
        # The latents TangoModel.encode_audio gives (posterior mean), before scaling.
        raw = torch.cat([model.vae.encode(mels[i : i + 256].to(args.device)).latent_dist.mean.cpu() for i in range(0, len(mels), 256)])
    scaling = float(1.0 / raw.std()) if args.vae_steps else float(model.vae.config.scaling_factor)
    model.vae.register_to_config(scaling_factor=scaling)
    latents = raw * scaling
    log(f"vae reconstruction MAE {vae_mae:.3f}; latents {tuple(latents.shape)}, scaling factor {scaling:.4f}")

    snapshots = {int(x) for x in args.snapshots.split(",") if x.strip()}
    snapshot_reports = {}

    def on_step(step: int) -> None:
        if step in snapshots and step != args.unet_steps:
            folder = Path(f"{out}-step{step}")
            model.save_pretrained(folder)
            if args.eval_clips:
                snapshot_reports[step] = evaluate(model, args.eval_clips, args)
                log(f"snapshot {step}: {json.dumps(snapshot_reports[step])}")
                (folder / "training_report.json").write_text(json.dumps({"unet_steps": step, "heldout": snapshot_reports[step]}, indent=2))
            model.denoiser.train()
            model.text_encoder.train(args.train_text_encoder)

    if args.text_pretrain_steps:
        t0 = time.time()
        report_text = pretrain_text_encoder(
            model.tokenizer, model.text_encoder, data["caption"], model.pipe.config.text_max_length, args.text_pretrain_steps, args.seed, args.device
        )
        timings["text_s"] = round(time.time() - t0, 1)
    t0 = time.time()
    train_unet(model, latents, data["caption"], args, on_step)
    timings["unet_s"] = round(time.time() - t0, 1)
    model.name_or_path = str(out)
    model.to("cpu")
    model.save_pretrained(out)
    model.to(args.device)
    timings["train_total_s"] = round(time.time() - started, 1)
    log(f"saved {out} after {timings['train_total_s']} s")

    report = {
        "args": vars(args),
        "timings": timings,
        "vae_reconstruction_mae": round(vae_mae, 4),
        "text_pretraining": report_text if args.text_pretrain_steps else None,
        "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in model.modules().items()},
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
        "snapshots": snapshot_reports,
    }
    if args.eval_clips:
        from baton_trainer.backends.tango import TangoModel

        loaded = TangoModel.from_pretrained(out, device=args.device)
        t0 = time.time()
        report["heldout"] = evaluate(loaded, args.eval_clips, args)
        timings["eval_s"] = round(time.time() - t0, 1)
        log(f"held-out: {json.dumps(report['heldout'])}")
    (out / "training_report.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
