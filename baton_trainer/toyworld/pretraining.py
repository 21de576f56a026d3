"""What the toy models' pretraining scripts share (`scripts/train_toy_tango.py`,
`scripts/train_toy_flow.py`): the log line, the pretraining world's options and clips, teaching a
text encoder the toy language, and judging a model's generations for held-out captions with the
noise-free oracle.

    add_world_arguments(parser); data = render_pretraining_clips(args, duration_s=2.56)
    pretrain_text_encoder(tokenizer, encoder, captions, max_length, steps=300, seed=0)
    report = heldout_report(backend, n=400, seed=0, num_inference_steps=25, guidance_scale=3.0)
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..captions import make_caption
from .events import EVENT_NAMES
from .oracle import OracleAnnotator, is_aligned
from .render import PRETRAIN_WORLD, render_dataset


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def add_world_arguments(parser) -> None:
    """The pretraining world's options (defaults: `render.PRETRAIN_WORLD`, the loose world both
    shipped toy models learned from)."""

    parser.add_argument("--num-clips", type=int, default=6000, help="rendered pretraining clips")
    parser.add_argument("--order-noise", type=float, default=PRETRAIN_WORLD["order_noise"], help="share of 3-event clips that ignore the caption's order")
    parser.add_argument(
        "--event-dropout",
        type=float,
        default=PRETRAIN_WORLD["event_dropout"],
        help="chance that each event a multi-event caption names is missing from its clip",
    )
    parser.add_argument("--pair-event-dropout", type=float, default=None, help="the same for 2-event captions only (default: --event-dropout)")
    parser.add_argument(
        "--gap-concentration",
        type=float,
        default=PRETRAIN_WORLD["gap_concentration"],
        help="Dirichlet concentration of the gaps between events (larger: more even)",
    )
    parser.add_argument("--event-counts", default="0.2,0.4,0.4", help="probabilities of 1, 2 and 3 events per pretraining clip")


def render_pretraining_clips(args, duration_s: float) -> dict:
    """The captioned clips of the world `add_world_arguments` describes, seeded by `args.seed`."""

    log(f"rendering {args.num_clips} clips")
    return render_dataset(
        args.num_clips,
        seed=args.seed,
        duration_s=duration_s,
        order_noise=args.order_noise,
        event_dropout=args.event_dropout,
        pair_event_dropout=args.pair_event_dropout,
        gap_concentration=args.gap_concentration,
        event_count_probs=[float(x) for x in args.event_counts.split(",")],
    )


def pretrain_text_encoder(tokenizer, encoder, captions: list[str], max_length: int, steps: int, seed: int, device="cpu") -> dict:
    """Teach a toy text encoder the toy language before the denoiser sees it, as FLAN-T5 and
    T5Gemma are pretrained before TANGO and Stable Audio 3.

    A randomly initialised encoder trained only through the denoiser never learns which event a
    caption names first: the denoiser cannot use an order the encoder does not yet carry, and the
    encoder gets no gradient towards order from a denoiser that ignores it. Two linear heads on the
    last hidden state predict, for every token, which event it names (or none) and its place
    among the caption's events (none, 1st, 2nd, 3rd); the heads are thrown away afterwards.
    """

    event_ids = {tokenizer.convert_tokens_to_ids(name): k + 1 for k, name in enumerate(EVENT_NAMES)}
    hidden = encoder.get_input_embeddings().embedding_dim
    heads = torch.nn.ModuleDict({"event": torch.nn.Linear(hidden, len(EVENT_NAMES) + 1), "place": torch.nn.Linear(hidden, 4)}).to(device)
    params = list(encoder.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(seed + 3)
    encoder.train()
    for step in range(steps):
        index = torch.randint(0, len(captions), (64,), generator=gen).tolist()
        tokens = tokenizer([captions[i] for i in index], max_length=max_length, padding=True, truncation=True, return_tensors="pt")
        ids = tokens.input_ids
        event = torch.zeros_like(ids)
        for token_id, k in event_ids.items():
            event[ids == token_id] = k
        place = torch.where(event > 0, (event > 0).long().cumsum(1), torch.zeros_like(ids)).clamp(max=3)
        mask = tokens.attention_mask.bool()
        out = encoder(input_ids=ids.to(device), attention_mask=tokens.attention_mask.to(device)).last_hidden_state[mask.to(device)]
        loss = torch.nn.functional.cross_entropy(heads["event"](out), event[mask].to(device)) + torch.nn.functional.cross_entropy(
            heads["place"](out), place[mask].to(device)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            with torch.no_grad():
                accuracy = (heads["place"](out).argmax(-1) == place[mask].to(device)).float().mean().item()
            log(f"text step {step + 1}/{steps}: loss {loss.item():.4f}, place accuracy {accuracy:.3f}")
    encoder.eval()
    return {"loss": round(loss.item(), 4), "place_accuracy": round(accuracy, 4)}


def heldout_captions(n: int, task: str, seed: int) -> list[tuple[str, list[str]]]:
    """Captions as the prompts stage makes them (toy event names as labels), drawn apart from
    the pretraining captions' random stream."""

    rng = np.random.default_rng([seed, 991, 0 if task == "integrity" else 1])
    k = 2 if task == "integrity" else 3
    rows = []
    for _ in range(n):
        labels = [str(x) for x in rng.choice(EVENT_NAMES, size=k, replace=False)]
        rows.append((make_caption(labels, task, rng), labels))
    return rows


def heldout_report(model, n: int, seed: int, num_inference_steps: int, guidance_scale: float, batch: int = 50, duration_s: float | None = None) -> dict:
    """Integrity and temporal accuracy of `model`'s clips for `n` held-out captions per task, as
    the noise-free oracle judges them, with how often every event is there and, among those
    complete clips, how often they are in order."""

    oracle = OracleAnnotator()
    extra = {} if duration_s is None else {"duration_s": duration_s}
    results = {}
    for task in ("integrity", "temporal"):
        rows = heldout_captions(n, task, seed)
        outcomes, present, in_order = [], [], []
        started = time.time()
        for start in range(0, n, batch):
            chunk = rows[start : start + batch]
            seeds = [10_000 + start + i for i in range(len(chunk))]
            clips = model.generate([c for c, _ in chunk], seeds, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, **extra)
            for wav, (_, labels) in zip(clips, chunk):
                detections = oracle.detect(wav, model.sample_rate)
                outcomes.append(is_aligned(detections, labels, task))
                present.append(is_aligned(detections, labels, "integrity"))
                if present[-1]:
                    in_order.append(is_aligned(detections, labels, "temporal"))
            log(f"eval {task}: {start + len(chunk)}/{n}, aligned so far {np.mean(outcomes):.3f}")
        p, q = float(np.mean(outcomes)), float(np.mean(present))
        results[task] = {
            "accuracy": round(p, 4),
            "stderr": round(math.sqrt(p * (1 - p) / n), 4),
            "all_events_present": round(q, 4),
            "in_order_when_complete": round(float(np.mean(in_order)), 4) if in_order else None,
            "clips": n,
            "seconds": round(time.time() - started, 1),
        }
    return results
