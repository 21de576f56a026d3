"""Train the toy CLAP shipped in baton_trainer/toyworld/pretrained/toy_clap (seeded, CPU).

    python scripts/train_toy_clap.py --out baton_trainer/toyworld/pretrained/toy_clap

A tiny `ClapModel` learns, contrastively, to match rendered toy clips with their captions. Each
3-event clip's caption also comes with the same caption in another order as an extra negative,
and each 2-event clip's with a caption naming one wrong event, so the embeddings must carry which
events sound and in what order (what the reward model reads from them).

The reward model scores *generated* clips, which sound unlike rendered ones (the toy VAE and the
Griffin-Lim vocoder smear them, and the sampler's latent errors add artefacts). Trained on rendered
clips alone, the CLAP separated aligned from unaligned generated clips far worse than rendered ones
(AUC 0.85-0.90 against 0.98 on clean re-renders of the same detections), so the shipped CLAP is
trained in two runs: first on rendered clips, then, from that checkpoint (`--init`), with
`--augment 0.7`: that share of the clips pass through the shipped toy TANGO's VAE and vocoder,
half of them with Gaussian noise (sd 0.2-1.2) added to the latents. (One run from scratch with
the augmentation stayed at chance on its held-out clips for its first 900 steps and was stopped.)

    python scripts/train_toy_clap.py --out /tmp/toy_clap_rendered --threads 1
    python scripts/train_toy_clap.py --init /tmp/toy_clap_rendered --augment 0.7 --num-clips 3000 \
        --steps 600 --lr 3e-4 --warmup 20 --workers 2 --out baton_trainer/toyworld/pretrained/toy_clap

Audio goes through `reward_hub.prepare_waveform` and the ClapFeatureExtractor exactly as
`ClapEmbedder` feeds it (48 kHz, padded to 10 s), so training and use see the same input.
Writes ClapModel + ClapProcessor (save_pretrained) and training_report.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="baton_trainer/toyworld/pretrained/toy_clap")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-clips", type=int, default=4000)
    p.add_argument("--eval-clips", type=int, default=300)
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=1, help="processes that render clips and compute features")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--augment", type=float, default=0.0, help="share of clips passed through the toy TANGO's VAE and vocoder (half of them with latent noise)")
    p.add_argument("--init", default=None, help="start from this ClapModel folder instead of a fresh one")
    p.add_argument("--warmup", type=int, default=50, help="linear learning-rate warm-up steps")
    return p.parse_args(argv)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def draw_item(rng: np.random.Generator) -> dict:
    """One clip with its caption, and a hard negative caption (other order, or a wrong event)."""
    from baton_trainer.captions import INTEGRITY_CONJUNCTIONS, TEMPORAL_CONJUNCTIONS, make_caption
    from baton_trainer.toyworld.events import EVENT_NAMES
    from baton_trainer.toyworld.models import TOY_DURATION_S
    from baton_trainer.toyworld.render import ORDERED_PAIR_CONJUNCTIONS, render_sequence

    count = int(rng.choice([1, 2, 3], p=[0.15, 0.35, 0.5]))
    labels = [str(x) for x in rng.choice(EVENT_NAMES, size=count, replace=False)]
    others = [e for e in EVENT_NAMES if e not in labels]
    wrong = list(labels)
    wrong[int(rng.integers(count))] = str(rng.choice(others))
    order = list(labels)
    if count == 1:
        caption, negative = labels[0].capitalize(), wrong[0].capitalize()
    elif count == 2:
        if rng.random() < 0.5:
            template = ORDERED_PAIR_CONJUNCTIONS[int(rng.integers(len(ORDERED_PAIR_CONJUNCTIONS)))]
            caption = make_caption(labels, "integrity", template)
            negative = make_caption(labels[::-1], "integrity", template) if rng.random() < 0.5 else make_caption(wrong, "integrity", template)
        else:
            template = INTEGRITY_CONJUNCTIONS[int(rng.integers(len(INTEGRITY_CONJUNCTIONS)))]
            caption, negative = make_caption(labels, "integrity", template), make_caption(wrong, "integrity", template)
            order = [labels[i] for i in rng.permutation(2)]  # an order-free caption: either order
    else:
        template = TEMPORAL_CONJUNCTIONS[int(rng.integers(len(TEMPORAL_CONJUNCTIONS)))]
        caption = make_caption(labels, "temporal", template)
        swapped = list(labels)
        while swapped == labels:
            swapped = [labels[i] for i in rng.permutation(3)]
        negative = make_caption(swapped if rng.random() < 0.7 else wrong, "temporal", template)
    wav = render_sequence(order, rng, duration_s=TOY_DURATION_S)
    return {"audio": wav, "caption": caption, "negative": negative, "labels": labels, "count": count}


def decode_like_generated(items: list[dict], fraction: float, rng: np.random.Generator) -> int:
    """Replace a `fraction` of the clips by their round trip through the shipped toy TANGO's VAE and
    vocoder, half of those with noise (sd drawn from 0.2-1.2) on the unit-variance latents: the
    sound of generated clips. Returns how many clips were replaced."""
    if fraction <= 0:
        return 0
    from baton_trainer.toyworld.models import load_toy_tango

    tango = load_toy_tango().eval()
    picked = [i for i in range(len(items)) if rng.random() < fraction]
    sigmas = [float(rng.uniform(0.2, 1.2)) if rng.random() < 0.5 else 0.0 for _ in picked]
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    for start in range(0, len(picked), 64):
        chunk = picked[start : start + 64]
        with torch.no_grad():
            latents = tango.encode_audio(torch.from_numpy(np.stack([items[i]["audio"] for i in chunk])).float())
            noise = torch.tensor(sigmas[start : start + 64])[:, None, None, None] * torch.randn(latents.shape, generator=gen)
            decoded = tango.decode_latents(latents + noise).numpy()
        for i, wav in zip(chunk, decoded):
            items[i]["audio"] = wav.astype(np.float32)
    return len(picked)


def _features_chunk(wavs) -> torch.Tensor:
    from baton_trainer.clap import CLAP_CLIP_SAMPLES, CLAP_SAMPLE_RATE, clap_feature_extractor
    from reward_hub import prepare_waveform

    torch.set_num_threads(1)
    prepared = [prepare_waveform(w, 16000, CLAP_CLIP_SAMPLES) for w in wavs]
    return clap_feature_extractor()(prepared, sampling_rate=CLAP_SAMPLE_RATE, return_tensors="pt")["input_features"]


def features(wavs, workers: int = 1, batch: int = 32) -> torch.Tensor:
    """ClapFeatureExtractor input features of 16 kHz clips, exactly as ClapEmbedder makes them."""
    chunks = [wavs[i : i + batch] for i in range(0, len(wavs), batch)]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            return torch.cat(list(pool.map(_features_chunk, chunks)))
    return torch.cat([_features_chunk(c) for c in chunks])


def embed_text(model, processor, texts):
    tokens = processor.tokenizer(list(texts), padding=True, return_tensors="pt").to(model.device)
    out = model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    return F.normalize(out.pooler_output if not isinstance(out, torch.Tensor) else out, dim=-1)


def embed_audio(model, feats):
    out = model.get_audio_features(input_features=feats)
    return F.normalize(out.pooler_output if not isinstance(out, torch.Tensor) else out, dim=-1)


def evaluate(model, processor, items, feats) -> dict:
    model.eval()
    with torch.no_grad():
        audio = torch.cat([embed_audio(model, feats[i : i + 64]) for i in range(0, len(feats), 64)])
        text = embed_text(model, processor, [it["caption"] for it in items])
        negative = embed_text(model, processor, [it["negative"] for it in items])
    sims = text @ audio.T  # caption i vs clip j
    top1 = (sims.argmax(dim=1) == torch.arange(len(items), device=sims.device)).float().mean().item()
    ranks = (sims > sims.diag()[:, None]).sum(dim=1)
    top5 = (ranks < 5).float().mean().item()
    matched, hard = (audio * text).sum(-1), (audio * negative).sum(-1)
    temporal = [i for i, it in enumerate(items) if it["count"] == 3]
    # For 3-event clips compare against the caption in a different order only.
    from baton_trainer.captions import make_caption

    swapped_wins = []
    for i in temporal:
        labels = items[i]["labels"]
        swapped = make_caption([labels[2], labels[1], labels[0]], "temporal", None)
        plain = make_caption(labels, "temporal", None)
        with torch.no_grad():
            pair = embed_text(model, processor, [plain, swapped])
        swapped_wins.append(bool((audio[i] @ pair[0]) > (audio[i] @ pair[1])))
    model.train()
    return {
        "clips": len(items),
        "text_to_audio_top1": round(top1, 4),
        "text_to_audio_top5": round(top5, 4),
        "caption_beats_hard_negative": round((matched > hard).float().mean().item(), 4),
        "temporal_caption_beats_reversed_order": round(float(np.mean(swapped_wins)), 4) if swapped_wins else None,
        "temporal_clips": len(temporal),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from baton_trainer.toyworld.models import build_toy_clap

    started = time.time()
    model, processor = build_toy_clap(args.seed)
    if args.init:
        from transformers import ClapModel

        model = ClapModel.from_pretrained(args.init)
    model.to(args.device)
    rng = np.random.default_rng([args.seed, 7])
    log(f"rendering {args.num_clips} + {args.eval_clips} clips")
    items = [draw_item(rng) for _ in range(args.num_clips)]
    eval_rng = np.random.default_rng([args.seed, 8])
    eval_items = [draw_item(eval_rng) for _ in range(args.eval_clips)]
    decoded = decode_like_generated(items, args.augment, np.random.default_rng([args.seed, 9]))
    decode_like_generated(eval_items, args.augment, np.random.default_rng([args.seed, 10]))
    log(f"{decoded} of {len(items)} training clips decoded through the toy VAE + vocoder")
    log("computing CLAP features")
    feats = features([it["audio"] for it in items], args.workers).to(args.device)
    eval_feats = features([it["audio"] for it in eval_items], args.workers).to(args.device)
    log(f"features {tuple(feats.shape)} in {time.time() - started:.0f} s")

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(args.seed + 1)
    captions = [it["caption"] for it in items]
    negatives = [it["negative"] for it in items]
    t0 = time.time()
    for step in range(args.steps):
        index = torch.randperm(len(items), generator=gen)[: args.batch].to(args.device)
        audio = embed_audio(model, feats[index])
        text = embed_text(model, processor, [captions[i] for i in index.tolist()] + [negatives[i] for i in index.tolist()])
        positive, hard = text[: args.batch], text[args.batch :]
        scale = model.logit_scale_a.exp().clamp(max=100)
        targets = torch.arange(args.batch, device=args.device)
        # Clip -> caption over the batch's captions and their hard negatives; caption -> clip.
        # Captions repeat by chance (one-event captions); the exact duplicates are masked out.
        same = torch.tensor([[captions[i] == captions[j] and i != j for j in index.tolist()] for i in index.tolist()], device=args.device)
        logits_a = scale * audio @ torch.cat([positive, hard]).T
        logits_a[:, : args.batch] = logits_a[:, : args.batch].masked_fill(same, -1e4)
        logits_t = scale * positive @ audio.T
        logits_t = logits_t.masked_fill(same, -1e4)
        loss = 0.5 * (F.cross_entropy(logits_a, targets) + F.cross_entropy(logits_t, targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        opt.step()
        if step % 25 == 0 or step == args.steps - 1:
            log(f"step {step + 1}/{args.steps}: loss {loss.item():.4f} scale {scale.item():.1f}")
        if (step + 1) % 200 == 0 and step + 1 < args.steps:
            log(f"held-out: {evaluate(model, processor, eval_items, eval_feats)}")
    train_s = time.time() - t0
    model.eval()
    metrics = evaluate(model, processor, eval_items, eval_feats)
    log(f"held-out: {metrics}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.to("cpu")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    # Speed as the reward stage sees it: ClapEmbedder on 16 kHz toy clips.
    from baton_trainer.clap import ClapEmbedder

    embedder = ClapEmbedder(str(out), batch_size=32)
    t1 = time.time()
    embedder.embed_audio([it["audio"] for it in eval_items[:100]], 16000)
    per_100 = time.time() - t1
    report = {
        "args": vars(args),
        "heldout": metrics,
        "train_s": round(train_s, 1),
        "total_s": round(time.time() - started, 1),
        "embed_100_clips_s": round(per_100, 2),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
    }
    if args.init and (Path(args.init) / "training_report.json").is_file():
        report["init_training_report"] = json.loads((Path(args.init) / "training_report.json").read_text())
    (out / "training_report.json").write_text(json.dumps(report, indent=2))
    log(f"saved {out}: {json.dumps(report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
