"""Online policy optimisation: the policy samples G clips per caption, the training rewards score
them, group-normalised advantages push the policy (docs/online.md).

    grpo   Flow-GRPO (arXiv 2505.05470) / DDPO (2305.13301): PPO-clipped ratio of each sampler
           step's Gaussian log-probability, optional closed-form KL to the base model
    awm    Advantage Weighted Matching (2509.25050): BATON's Eq. 7 with online advantages as the
           weights, inside a PPO-clipped trust region against the old policy
    nft    DiffusionNFT (2509.16117): implicit positive and negative policies around the old one

Every optimiser step, for the trainer's loop (`objectives.base` says the contract):

    rollout r = step // rollout_reuse         captions (a seeded order over the training captions),
                                              G clips each, sampled by the current policy
                                              (`rollouts.PolicySampler`); stored in
                                              RUN/aligned/rollouts/ before anything is trained on it
    rewards                                   the training rewards (`rewards:` in the config) score the
                                              decoded clips; stored beside the rollout, so a resumed
                                              run repeats no reward call
    advantages                                group-normalised over every process's clips
                                              (`losses.group_advantages`)
    loss                                      the objective's, on this micro-step's share, plus the
                                              pretraining term every objective gets

Processes each take whole groups (`rollout_captions` a multiple of the process count). The old
policy of awm and nft is the sampling policy of the current rollout (`old_policy_decay` 0: its
exact weights, PPO's choice) or an EMA of it; grpo's old log-probabilities are recorded while
sampling.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file, save_file

from ..atomic import atomic_save_figure, atomic_write_json
from ..denoising import Batch, step_generator
from ..losses import awm_loss, clean_and_noise, clipped_policy_loss, gaussian_mean_kl, group_advantages, nft_loss
from ..rollouts import PolicySampler, Rollout, noise_levels
from .base import FeedbackRows, Objective

ROLLOUT_STREAM, ONLINE_STREAM = 2, 3  # beside the feedback (0) and pretraining (1) streams of `denoising`


class OldPolicy:
    """The trainable parameters of the old policy: a copy taken at each rollout (decay 0) or an EMA
    (old <- decay * old + (1 - decay) * current). Under LoRA they are the adapter's only; under full
    fine-tuning the whole denoiser: one more copy of its weights, in accelerator memory or, with
    `on_cpu` (`offload_copies`), in CPU memory."""

    def __init__(self, module: torch.nn.Module, decay: float, on_cpu: bool = False):
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.copy = [p.detach().to("cpu" if on_cpu else p.device, copy=True) for p in self.params]
        self.decay = decay

    @torch.no_grad()
    def update(self) -> None:
        for old, current in zip(self.copy, self.params):
            old.mul_(self.decay).add_(current.detach().to(old.device), alpha=1 - self.decay)

    @torch.no_grad()
    def _exchange(self) -> None:
        # one parameter at a time: the exchange holds one parameter's worth more, not a third copy
        for p, old in zip(self.params, self.copy):
            mine = p.detach().clone()
            p.copy_(old)
            old.copy_(mine)

    @contextlib.contextmanager
    def swapped_in(self):
        """The module runs with the old weights inside the block (no gradient), its own after."""
        self._exchange()
        try:
            with torch.no_grad():
                yield
        finally:
            self._exchange()


class RolloutStore:
    """Each rollout's clips (latents, log-probabilities, seeds) and rewards on disk, per process:
    RUN/aligned/rollouts/rollout-000012-rank0.pt and .rewards.json, written atomically."""

    def __init__(self, folder: Path, rank: int):
        self.folder, self.rank = Path(folder), rank

    def path(self, index: int, suffix: str) -> Path:
        return self.folder / f"rollout-{index:06d}-rank{self.rank}{suffix}"

    def load_clips(self, index: int) -> dict | None:
        path = self.path(index, ".pt")
        return torch.load(path, weights_only=True) if path.is_file() else None

    def save_clips(self, index: int, record: dict) -> None:
        path = self.path(index, ".pt")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(record, tmp)
        os.replace(tmp, path)

    def load_rewards(self, index: int) -> dict | None:
        path = self.path(index, ".rewards.json")
        return json.loads(path.read_text()) if path.is_file() else None

    def save_rewards(self, index: int, parts: dict) -> None:
        atomic_write_json(self.path(index, ".rewards.json"), parts)


class OnlineObjective(Objective):
    """What grpo, awm and nft share: rollouts, rewards, advantages, the stored record."""

    needs_feedback = True  # the captions to sample come from the rated rows
    default_eta: tuple[float, float] = (0.0, 0.0)  # (VP backends, flow backends)
    default_clip_range = 1e-2

    def select(self, rated) -> FeedbackRows:
        """The training captions, each once, in first-seen order; the clips themselves are not trained on."""
        from ..data import lyrics_column  # lazy: a config check imports the objectives, and data imports datasets

        if lyrics_column(rated) is not None:
            raise ValueError(f"{self.name}: rollouts sample from captions alone, and these rows have lyrics: use an offline objective for lyrics")
        self.captions = list(dict.fromkeys(rated["caption"]))
        return super().select(rated)

    def attach(self, denoiser, draw) -> None:
        super().attach(denoiser, draw)
        cfg, backend, acc = self.config, draw.backend, draw.accelerator
        if cfg.rollout_captions % acc.num_processes:
            raise ValueError(
                f"rollout_captions {cfg.rollout_captions} does not divide over {acc.num_processes} processes: groups are never split, "
                f"so use a multiple of {acc.num_processes} (e.g. {acc.num_processes * math.ceil(cfg.rollout_captions / acc.num_processes)})"
            )
        eta = cfg.rollout_eta if cfg.rollout_eta is not None else self.default_eta[backend.objective == "flow"]
        self.sampler = PolicySampler(
            backend,
            draw,
            cfg.rollout_steps,
            cfg.rollout_guidance_scale,
            eta,
            cfg.flow_noise,
            tuple(cfg.sde_window) if cfg.sde_window else None,
            draw.duration_s,
        )
        self.clip_range = cfg.clip_range if cfg.clip_range is not None else self.default_clip_range
        sharded = acc.distributed_type == DistributedType.FSDP or (
            acc.distributed_type == DistributedType.DEEPSPEED and acc.state.deepspeed_plugin.zero_stage == 3
        )
        if self.uses_old_policy and sharded:
            raise ValueError(
                f"{self.name}: its old policy is a copy of the trained parameters, which FSDP and DeepSpeed ZeRO-3 shard after the copy is taken: "
                "run it under DDP or DeepSpeed ZeRO-2 (docs/scale.md)"
            )
        self.old_policy = OldPolicy(denoiser, cfg.old_policy_decay, cfg.offload_copies and not cfg.use_lora) if self.uses_old_policy else None
        from ..rewards import training_rewards  # here: the rewards load models, which a config check does not need

        self.rewards = training_rewards(cfg, acc.device)
        self.store = RolloutStore(cfg.layout().aligned / "rollouts", acc.process_index)
        self.rollout: Rollout | None = None
        self.rollout_index = -1
        self.judges = None
        if cfg.judge_every:
            from reward_hub.rewards import RewardSet  # here: as `training_rewards`

            self.judges = RewardSet(cfg.eval_rewards, device=acc.device)
            shared = {r.identity() for r in self.judges.rewards} & {r.identity() for r in self.rewards.rewards}
            if shared:
                acc.print(f"warning: {sorted(shared)} judge(s) the policy and also train it: a judge that is trained on cannot see reward hacking")
            # The judge's sampler: deterministic (eta 0), as the evaluation samples.
            self.judge_sampler = PolicySampler(backend, draw, cfg.rollout_steps, cfg.rollout_guidance_scale, 0.0, duration_s=draw.duration_s)
        self.judged: list[dict] = []
        self.best: tuple[int, list[torch.Tensor]] | None = None

    uses_old_policy = False

    def training_steps(self, feedback, pretrain) -> int:
        """Optimiser steps of `num_epochs` passes over the training captions (one rollout each
        `rollout_reuse` steps), when `max_train_steps` is not set."""
        cfg = self.config
        return max(1, cfg.num_epochs * math.ceil(len(self.captions) / cfg.rollout_captions) * cfg.rollout_reuse)

    # -- the held-out judge -----------------------------------------------------------------------

    def end_of_step(self, denoiser, step: int) -> bool:
        """Every `judge_every` steps: the judges' and the training reward's view of the policy on the
        same clips (fixed captions and seeds); keeps the best judged weights; True when the judge
        fell while the training reward rose (`evaluation.intervals.reward_hacking`)."""
        from ..evaluation.intervals import reward_hacking  # here: the evaluation package is not needed without a judge

        cfg, acc = self.config, self.draw.accelerator
        if not cfg.judge_every or step % cfg.judge_every:
            return False
        scores = {"step": step, **self.judge(acc.unwrap_model(denoiser))}
        self.judged.append(scores)
        spread = f", diversity_mel {scores['diversity_mel']:.4f}" if "diversity_mel" in scores else ""
        acc.print(f"    step {step}: judge {scores['judge']:.4f} (SE {scores['judge_se']:.4f}), training reward {scores['reward']:.4f}{spread}")
        if cfg.report_to:
            acc.log({f"judge_{k}" if k != "judge" else k: v for k, v in scores.items() if k not in ("step", "judge_se")}, step=step)
        if acc.is_main_process:
            atomic_write_json(self.store.folder.parent / "judge_history.json", self.judged)
        # Step 0 (the untrained model) is judged too: its diversity is the floor's reference, and a
        # run that never beats it exports the untrained weights.
        floor = cfg.judge_min_diversity * self.judged[0].get("diversity_mel", 0.0) if self.judged[0]["step"] == 0 else 0.0
        eligible = scores.get("diversity_mel", math.inf) >= floor
        best_judge = -math.inf if self.best is None else next(j["judge"] for j in self.judged if j["step"] == self.best[0])
        if eligible and scores["judge"] > best_judge:
            self.best = (step, [p.detach().clone() for p in denoiser.parameters() if p.requires_grad])
        if len(self.judged) > 1 and reward_hacking(self.judged[-2], scores, cfg.stop_margin_se):
            acc.print(f"    stopping: the judge fell while the training reward rose (reward hacking); keeping the weights of step {self.best[0]}")
            return True
        return False

    @torch.no_grad()
    def judge(self, module) -> dict[str, float]:
        """The judges' mean (weighted sum) over fresh clips of the first `judge_captions` training
        captions, its standard error, and the training reward's mean on the same clips. Every
        process judges the same clips (no collective: the decision is the same everywhere)."""
        cfg, backend = self.config, self.draw.backend
        captions = [c for c in self.captions[: cfg.judge_captions] for _ in range(cfg.judge_clips_per_caption)]
        seeds = [(cfg.seed + 2000) * 1_000_003 + i for i in range(len(captions))]
        was_training = module.training
        module.eval()
        clean = self.judge_sampler.sample(module, captions, seeds, seeds).clean
        module.train(was_training)
        waves = list(backend.decode_clips(clean, self.judge_sampler.duration_s))
        weights = self.judges.weight_map()
        judged = sum(weights[name] * values for name, values in self.judges.score(captions, waves, backend.sample_rate).items())
        trained = self.rewards.weight_map()
        reward = sum(trained[name] * values for name, values in self.rewards.score(captions, waves, backend.sample_rate).items())
        se = float(np.std(judged, ddof=1) / np.sqrt(len(judged))) if len(judged) > 1 else 0.0
        result = {"judge": float(np.mean(judged)), "judge_se": se, "reward": float(np.mean(reward))}
        if cfg.judge_clips_per_caption > 1:  # the spread between a caption's clips: collapse shows as a fall
            from ..evaluation.metrics import log_mel_embeddings, within_caption_spread  # lazy: as `reward_hacking` in end_of_step

            result["diversity_mel"] = within_caption_spread(log_mel_embeddings(waves, backend.sample_rate), captions)
        return result

    def finish(self, denoiser) -> None:
        """The best judged weights go back into the denoiser before the export."""
        if self.best is None or self.best[0] == self.judged[-1]["step"]:
            return
        step, weights = self.best
        with torch.no_grad():
            for p, best in zip([p for p in denoiser.parameters() if p.requires_grad], weights):
                p.copy_(best)
        self.draw.accelerator.print(f"kept the weights of step {step}, the best by the judge")

    def save(self) -> None:
        """At every checkpoint and at the end: the training reward by rollout, from the stored
        rewards (RUN/aligned/rollout_rewards.png), and the judge's history (judge_history.png; main process)."""
        if self.draw.accelerator.is_main_process:
            plot_rollout_rewards(self.store.folder, self.store.folder.parent / "rollout_rewards.png")
            if self.judged:
                plot_judge_history(self.judged, self.store.folder.parent / "judge_history.png")

    # -- checkpoint state ------------------------------------------------------------------------

    def state_paths(self, folder: Path) -> tuple[Path, Path]:
        rank = self.draw.accelerator.process_index
        return Path(folder) / f"online_state-rank{rank}.json", Path(folder) / f"online_state-rank{rank}.safetensors"

    def save_state(self, folder: Path) -> None:
        """Into a checkpoint folder, each process its own: the old policy's weights, the rollout it
        belongs to, the judge's history and the best judged weights, so that a resumed run samples,
        keeps and exports what an uninterrupted run would."""
        text, weights = self.state_paths(folder)
        text.parent.mkdir(parents=True, exist_ok=True)  # a process may get here before the one that makes the folder
        tensors = {}
        if self.old_policy is not None:
            tensors.update({f"old_policy.{i}": t.detach().cpu().contiguous() for i, t in enumerate(self.old_policy.copy)})
        if self.best is not None:
            tensors.update({f"best.{i}": t.detach().cpu().contiguous() for i, t in enumerate(self.best[1])})
        save_file(tensors, weights)
        state = {"rollout_index": self.rollout_index, "judged": self.judged, "best_step": self.best[0] if self.best else None}
        text.write_text(json.dumps(state))

    def load_state(self, folder: Path) -> None:
        text, weights = self.state_paths(folder)
        if not text.is_file():  # a checkpoint written before the objective kept its state
            self.draw.accelerator.print(f"warning: {text} is missing: the old policy restarts from the restored weights and the judge from this step")
            return
        state, tensors = json.loads(text.read_text()), load_file(weights)
        self.rollout_index, self.judged = state["rollout_index"], state["judged"]
        if self.old_policy is not None:
            with torch.no_grad():
                for i, old in enumerate(self.old_policy.copy):
                    old.copy_(tensors[f"old_policy.{i}"])
        if state["best_step"] is not None:
            device = self.draw.accelerator.device
            self.best = (state["best_step"], [tensors[f"best.{i}"].to(device) for i in range(sum(k.startswith("best.") for k in tensors))])

    # -- rollouts --------------------------------------------------------------------------------

    def rollout_plan(self, index: int) -> tuple[list[str], list[int], list[int], list[int]]:
        """This process's captions, start seeds, noise seeds and (global) group ids of rollout `index`."""
        cfg, acc = self.config, self.draw.accelerator
        n, per = len(self.captions), cfg.rollout_captions
        chosen = []
        for position in range(index * per, (index + 1) * per):  # a seeded order per pass over the captions
            epoch, i = divmod(position, n)
            chosen.append(int(torch.randperm(n, generator=step_generator(cfg.seed, epoch, ROLLOUT_STREAM))[i]))
        local = per // acc.num_processes
        mine = range(acc.process_index * local, (acc.process_index + 1) * local)
        captions, starts, noises, groups = [], [], [], []
        base = (cfg.seed + 1) * 1_000_003 + index * 10_007
        for g in mine:
            for c in range(cfg.group_size):
                clip = g * cfg.group_size + c
                captions.append(self.captions[chosen[g]])
                starts.append(base + (g * cfg.group_size if cfg.shared_start_noise else clip))
                noises.append(base + 7_919 * (clip + 1))
                groups.append(g)
        return captions, starts, noises, groups

    def rollout_at(self, denoiser, step: int) -> Rollout:
        """The rollout step `step` trains on: read from the store, or sampled now and stored."""
        index = step // self.config.rollout_reuse
        if index == self.rollout_index and self.rollout is not None:
            return self.rollout
        acc = self.draw.accelerator
        captions, starts, noises, groups = self.rollout_plan(index)
        record = self.store.load_clips(index)
        module = acc.unwrap_model(denoiser)
        if self.old_policy is not None and index != self.rollout_index:  # equal: resumed inside the rollout, its old policy restored
            self.old_policy.update()  # the old policy is the one that samples this rollout
        if record is None:
            was_training = module.training
            module.eval()
            rollout = self.sampler.sample(module, captions, starts, noises)
            module.train(was_training)
            record = {
                "captions": captions,
                "latents": rollout.latents.cpu(),
                "log_probs": rollout.log_probs.cpu(),
                "start_seeds": starts,
                "noise_seeds": noises,
            }
            self.store.save_clips(index, record)
        else:
            text = self.draw.backend.encode_text(list(record["captions"]), self.sampler.duration_s).to(acc.device, self.draw.weight_dtype)
            rollout = Rollout(list(record["captions"]), record["latents"].to(acc.device), record["log_probs"].to(acc.device), text)
        parts = self.store.load_rewards(index)
        if parts is None:
            parts = self.score(rollout)
            self.store.save_rewards(index, parts)
        rollout.advantages, rollout.logs = self.advantages(parts, groups)
        self.rollout, self.rollout_index = rollout, index
        return rollout

    def score(self, rollout: Rollout) -> dict[str, list[float | None]]:
        """Each training reward's value per clip (None where a reward failed on a clip, with
        `on_bad_reward: skip`)."""
        from reward_hub.rewards import RewardError  # here: as `training_rewards`

        backend = self.draw.backend
        waves = list(backend.decode_clips(rollout.clean, self.sampler.duration_s))
        try:
            parts = self.rewards.score(rollout.captions, waves, backend.sample_rate)
            return {name: [float(v) for v in values] for name, values in parts.items()}
        except RewardError as exc:
            if self.config.on_bad_reward == "stop":
                raise RewardError(f"{exc}; rollout clips are kept in {self.store.folder}; set on_bad_reward: skip to leave such clips out") from None
        parts: dict[str, list[float | None]] = {}
        for i, (caption, wave) in enumerate(zip(rollout.captions, waves)):  # clip by clip: find the bad ones
            try:
                one = self.rewards.score([caption], [wave], backend.sample_rate)
            except RewardError as exc:
                self.draw.accelerator.print(f"skipped: {exc}")
                one = {name: [None] for name in self.rewards.weight_map()}
            for name, values in one.items():
                parts.setdefault(name, []).append(None if values[0] is None else float(values[0]))
        return parts

    def advantages(self, parts: dict[str, list], groups: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        """This process's clips' advantages, normalised over every process's clips, and the
        rollout's diagnostics (the same on every process)."""
        from reward_hub.rewards import combine  # here: as `training_rewards`

        acc, cfg = self.draw.accelerator, self.config
        names = sorted(parts)
        local = torch.tensor([[np.nan if v is None else v for v in parts[name]] for name in names], dtype=torch.float64, device=acc.device).T
        local_groups = torch.tensor(groups, device=acc.device)
        values, all_groups = acc.gather(local.contiguous()).cpu(), acc.gather(local_groups).cpu()
        bad = torch.isnan(values).any(dim=1)
        good = ~bad
        combined = torch.zeros(len(values), dtype=torch.float64)
        if good.any():
            kept = {name: values[good, j].numpy() for j, name in enumerate(names)}
            combined[good] = torch.from_numpy(
                np.asarray(combine(kept, self.rewards.weight_map(), all_groups[good].numpy(), cfg.reward_aggregation), dtype=np.float64)
            )
        advantages = torch.zeros(len(values))
        zero_spread = torch.ones(len(values), dtype=torch.bool)
        if good.any():
            advantages[good], zero_spread[good] = group_advantages(combined[good], all_groups[good], cfg.advantage_std, cfg.advantage_clip)
        groups_total = int(all_groups.unique().numel())
        zero_groups = sum(bool(zero_spread[all_groups == g].all()) for g in all_groups.unique())
        logs = {
            "reward_mean": float(combined[good].mean()) if good.any() else 0.0,
            "reward_std": float(combined[good].std(unbiased=False)) if good.any() else 0.0,
            "zero_spread_fraction": zero_groups / groups_total,
            "bad_reward_clips": float(bad.sum()),
        }
        for j, name in enumerate(names):
            column = values[good, j]
            logs[f"reward_{name}"] = float(column.mean()) if len(column) else 0.0
        n_local = len(groups)
        mine = slice(acc.process_index * n_local, (acc.process_index + 1) * n_local)
        return advantages[mine].to(acc.device), logs

    # -- the loss --------------------------------------------------------------------------------

    def loss(self, denoiser, feedback, pretrain, step, micro):
        rollout = self.rollout_at(denoiser, step)
        loss, logs = self.policy_loss(denoiser, rollout, step, micro)
        logs.update(rollout.logs)
        return self.with_pretraining(loss, logs, denoiser, pretrain, step, micro)

    def policy_loss(self, denoiser, rollout: Rollout, step: int, micro: int) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def fresh_noised(self, rollout: Rollout, step: int, micro: int):
        """The rollout's clean latents noised at fresh timesteps (awm, nft), drawn as every batch is."""
        batch = Batch(rollout.clean.float(), rollout.text, rollout.advantages)
        return self.draw.noised(batch, step, micro, ONLINE_STREAM)

    def predictions(self, denoiser, noised, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The current policy's prediction on `noised` (with gradient) and the old policy's: the
        current one, detached, on a rollout's first step with decay 0 (the weights are the
        sampling policy's), else the stored old weights, swapped in before the current forward
        (swapping after it would change tensors its backward needs)."""
        if step % self.config.rollout_reuse == 0 and self.config.old_policy_decay == 0:
            prediction = self.draw.predict(denoiser, noised)
            return prediction, prediction.detach()
        with self.old_policy.swapped_in():
            old = self.draw.predict(self.draw.accelerator.unwrap_model(denoiser), noised).detach()
        return self.draw.predict(denoiser, noised), old


class GRPOObjective(OnlineObjective):
    """GRPO on the sampler's Gaussian steps: for each trained step k,
    `losses.clipped_policy_loss(log p_theta(x_{k+1} | x_k), log p_old, A)` (+ kl_beta * KL to the base)."""

    name = "grpo"
    default_eta = (1.0, 0.7)
    default_clip_range = 1e-4

    def attach(self, denoiser, draw) -> None:
        super().attach(denoiser, draw)
        steps = self.sampler.stochastic_steps()
        if not steps:
            raise ValueError("grpo: no stochastic sampler step (rollout_eta 0?): nothing has a log-probability to train")
        self.trained_per_step = max(1, round(self.config.train_fraction * len(steps)))
        if self.config.gradient_accumulation_steps > self.trained_per_step:
            raise ValueError(
                f"grpo: gradient_accumulation_steps {self.config.gradient_accumulation_steps} is more than the {self.trained_per_step} sampler steps trained per optimiser step; "
                "each micro-step trains a share of the steps: lower it, or raise rollout_steps or train_fraction"
            )
        self.reference = None
        if self.config.kl_beta > 0:
            from .reference import ReferenceModel  # only with a KL term

            self.reference = ReferenceModel(denoiser, draw, self.config.use_lora, self.config.offload_copies)

    def trained_steps(self, step: int, micro: int) -> list[int]:
        """This micro-step's share of the sampler steps trained at `step` (a seeded choice)."""
        steps = self.sampler.stochastic_steps()
        order = torch.randperm(len(steps), generator=step_generator(self.config.seed, step, ONLINE_STREAM))[: self.trained_per_step]
        share = torch.tensor_split(order, self.config.gradient_accumulation_steps)[micro]
        return [steps[int(i)] for i in share]

    def policy_loss(self, denoiser, rollout, step, micro):
        ks = self.trained_steps(step, micro)
        log_p, means, stds = self.sampler.steps_log_prob(denoiser, rollout, ks)
        # One clipped surrogate over every (step, clip) of the share: the mean over steps of each step's loss.
        loss, logs = clipped_policy_loss(log_p.flatten(), rollout.log_probs[:, ks].T.flatten(), rollout.advantages.repeat(len(ks)), self.clip_range)
        logs["kl_reference"] = 0.0
        if self.reference is not None:
            with torch.no_grad(), self.reference.module(denoiser) as reference:
                ref_means, _ = self.sampler.steps_distribution(reference, rollout, ks)
            kl = torch.stack([gaussian_mean_kl(m, r, s) for m, r, s in zip(means, ref_means, stds)]).mean()
            loss = loss + self.config.kl_beta * kl
            logs["kl_reference"] = kl.detach().item()
        return loss, {"loss_policy": loss.detach().item(), **logs}


class AWMObjective(OnlineObjective):
    """AWM: `losses.awm_loss` on the rollout's clean latents at fresh (t, eps)."""

    name = "awm"
    uses_old_policy = True

    def policy_loss(self, denoiser, rollout, step, micro):
        noised = self.fresh_noised(rollout, step, micro)
        prediction, old = self.predictions(denoiser, noised, step)
        snr = self.draw.snr(noised.timesteps)
        errors = (prediction.float() - noised.target.float()).pow(2).flatten(1).mean(dim=1)
        old_errors = (old.float() - noised.target.float()).pow(2).flatten(1).mean(dim=1)
        if snr is not None:
            errors, old_errors = errors * snr.float(), old_errors * snr.float()
        loss, logs = awm_loss(errors, old_errors, rollout.advantages, self.clip_range)
        return loss, {"loss_policy": loss.detach().item(), **logs}


class NFTObjective(OnlineObjective):
    """DiffusionNFT: `losses.nft_loss` on the rollout's clean latents at fresh (t, eps)."""

    name = "nft"
    uses_old_policy = True

    def policy_loss(self, denoiser, rollout, step, micro):
        cfg, backend = self.config, self.draw.backend
        noised = self.fresh_noised(rollout, step, micro)
        prediction, old = self.predictions(denoiser, noised, step)
        alpha, sigma = noise_levels(backend, noised.timesteps)
        to_clean = lambda p: clean_and_noise(p, noised.noisy, self.sampler.prediction_type, alpha, sigma)[0]
        loss, logs = nft_loss(prediction, old, rollout.clean.float(), to_clean, rollout.advantages, cfg.advantage_clip, cfg.nft_beta)
        return loss, {"loss_policy": loss.detach().item(), **logs}


def plot_rollout_rewards(folder: Path, path: Path) -> None:
    """Each reward's mean over a rollout's clips (rank 0's), by rollout, with the spread of the clips
    (one standard deviation): a reward that never rises means the policy is not learning from it."""
    import matplotlib  # lazy: slow to import, and the backend must be set before pyplot loads

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # lazy: after matplotlib.use

    records = sorted(Path(folder).glob("rollout-*-rank0.rewards.json"))
    if not records:
        return
    values: dict[str, list[list[float]]] = {}
    for record in records:
        for name, scores in json.loads(record.read_text()).items():
            values.setdefault(name, []).append([v for v in scores if v is not None])
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for name, per_rollout in values.items():
        mean = np.array([np.mean(v) if v else np.nan for v in per_rollout])
        spread = np.array([np.std(v) if v else np.nan for v in per_rollout])
        ax.plot(mean, label=name)
        ax.fill_between(np.arange(len(mean)), mean - spread, mean + spread, alpha=0.2)
    ax.set_xlabel("rollout")
    ax.set_ylabel("training reward")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)


def plot_judge_history(judged: list[dict], path: Path) -> None:
    """The judge, the training reward on the judge's clips and their diversity_mel, by step: a
    judge that falls while the reward rises is reward hacking; a falling diversity is collapse."""
    import matplotlib  # lazy: as in plot_rollout_rewards

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # lazy: after matplotlib.use

    steps = [j["step"] for j in judged]
    keys = [k for k in ("judge", "reward", "diversity_mel") if all(k in j for j in judged)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0), squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = np.array([j[key] for j in judged])
        ax.plot(steps, values, marker="o")
        if key == "judge":
            se = np.array([j["judge_se"] for j in judged])
            ax.fill_between(steps, values - se, values + se, alpha=0.2)
        ax.set_xlabel("step")
        ax.set_title({"reward": "training reward (judge clips)"}.get(key, key), fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)
