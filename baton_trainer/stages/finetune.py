"""The `finetune` stage: reward-weighted denoising fine-tuning (BATON's Stage 3) -> RUN/aligned/.

    accelerate launch -m baton_trainer finetune --run_dir RUN --model declare-lab/tango-full-ft-audiocaps

Human-rated clips (RUN/feedback) mixed 1:1 with reward-labelled ones (RUN/reward_labeled) weight
the model's own denoising loss, and `pretrain_weight` (the paper's beta) times the same loss on
pretraining clips keeps it close to its data (Eq. 7, `baton_trainer.objectives.baton`);
`--objective dpo|kto|reward_ranked` trains the same ratings with Diffusion-DPO, Diffusion-KTO or
reward-ranked fine-tuning instead (`baton_trainer.objectives`). This module loads and mixes the data
(`load_training_data`); the loop is `DiffusionTrainer.train` in `baton_trainer.trainer`. RUN/aligned
holds the export (LoRA adapter or full denoiser), its training checkpoints, logs,
`finetune_config.json`, `versions.json` and `train_summary.json`.

Imports inside the functions keep `python -m baton_trainer --help` fast: the CLI imports every
stage module at start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..config import ConfigError
from ..layout import RunLayout
from ..losses import SnrMode

if TYPE_CHECKING:
    from ..latent_cache import EncodedSet, PairedSet


@dataclass
class FinetuneConfig:
    # Renamed keys (old -> new): "beta" meant three things; the old names work for one release.
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"beta": "pretrain_weight", "beta_dpo": "dpo_beta", "beta_kto": "kto_beta"}

    run_dir: str = field(default="runs/baton", metadata={"help": "run folder; the other paths default inside it"})
    model: str = field(default="declare-lab/tango-full-ft-audiocaps", metadata={"help": "base model: folder or Hub id"})
    feedback_dataset: str | None = field(
        default=None, metadata={"help": "human-rated preference data (default RUN/feedback; 'none': no human-rated rows)", "none_turns_off": True}
    )
    reward_dataset: str | None = field(
        default=None, metadata={"help": "reward-rated data (default RUN/reward_labeled if it exists; 'none': no reward-rated rows)", "none_turns_off": True}
    )
    pretrain_dataset: str | None = field(default=None, metadata={"help": "(caption, audio) data for the pretraining term (pretrain_weight)"})
    output_dir: str | None = field(default=None, metadata={"help": "export folder (default RUN/aligned)"})
    mix_ratio: float = field(default=1.0, metadata={"help": "reward-rated rows per human-rated row (paper: 1)"})
    weighting: Literal["reward", "ones", "none"] = field(
        default="reward", metadata={"help": "feedback weights w_i: the rewards, all ones (ablation), or no feedback term"}
    )
    objective: str = field(
        default="baton",
        metadata={
            "help": "baton (Eq. 7) | dpo (Diffusion-DPO on aligned x not-aligned pairs) | kto (Diffusion-KTO on per-clip labels) | reward_ranked (plain loss on the best clips) | grpo, awm, nft (online: the policy's own clips, scored by `rewards`); the classes are in baton_trainer/objectives"
        },
    )
    pretrain_weight: float = field(default=0.5, metadata={"help": "weight of the pretraining term (the paper's beta, 0.5), added to every objective"})
    dpo_beta: float = field(default=2000.0, metadata={"help": "Diffusion-DPO's beta (Tango 2's 2000)"})
    kto_beta: float = field(default=1000.0, metadata={"help": "Diffusion-KTO's beta (its authors' default 1000)"})
    kto_lambda_desirable: float = 1.0
    kto_lambda_undesirable: float = 1.0
    max_pairs_per_caption: int = field(default=8, metadata={"help": "DPO: at most this many (aligned, not aligned) pairs per caption"})
    min_reward_gap: float | None = field(default=None, metadata={"help": "DPO: also pair unrated clips whose rewards differ by this much"})
    reward_threshold: float = field(default=0.5, metadata={"help": "reward_ranked and kto: a clip counts as good at this weight or above"})
    reward_top_fraction: float | None = field(
        default=None, metadata={"help": "reward_ranked: the best fraction of each caption's clips instead of the threshold"}
    )
    pairwise_dataset: str | None = field(
        default=None, metadata={"help": "Audio-Alpaca-schema pairs (prompt, chosen, rejected): folder or Hub id; used as the human-rated data"}
    )
    snr_mode: SnrMode | None = field(
        default=None, metadata={"help": "none | min_snr | tango (TANGO's own weighting); default the model's own (TANGO: tango, others: none)"}
    )
    snr_gamma: float = 5.0
    cfg_dropout: float | None = field(
        default=None,
        metadata={
            "help": "chance a clip's caption is replaced by the null conditioning, as classifier-free-guidance training does; default the model's own (TANGO 0, others 0.1)"
        },
    )
    learning_rate: float = 1e-5
    optimizer: Literal["adamw", "adamw_8bit"] = field(
        default="adamw",
        metadata={"help": "adamw, or adamw_8bit: bitsandbytes' 8-bit AdamW, a quarter of the moments' memory (pip install 'baton-trainer[8bit]', CUDA)"},
    )
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    lr_scheduler: str = field(default="constant_with_warmup", metadata={"help": "a diffusers.optimization schedule name"})
    lr_warmup_steps: int = 0
    train_batch_size: int = field(default=6, metadata={"help": "feedback clips per process per micro-step"})
    pretrain_batch_size: int | None = field(default=None, metadata={"help": "pretrain clips per micro-step (default: train_batch_size)"})
    num_epochs: int = 10
    max_train_steps: int | None = field(default=None, metadata={"help": "stop after this many optimiser steps"})
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] | None = field(default=None, metadata={"help": "default: what `accelerate launch` was configured with"})
    gradient_checkpointing: bool = False
    use_lora: bool = False
    lora_rank: int = 8
    lora_alpha: int | None = None
    lora_target_modules: list[str] | None = field(default=None, metadata={"help": "default: the model's attention projections"})
    duration_s: float | None = field(default=None, metadata={"help": "clip length for training (default: the model's)"})
    cache_embeddings: bool = field(default=True, metadata={"help": "encode latents and captions once, cache on disk"})
    cache_dir: str | None = field(default=None, metadata={"help": "default RUN/cache"})
    cache_reference_losses: bool = field(
        default=True,
        metadata={
            "help": "DPO/KTO: keep the reference model's per-step losses in the cache, so a rerun of the same data (a beta sweep) skips its forward pass"
        },
    )
    # -- online objectives (grpo, awm, nft; docs/online.md) ------------------------------------------
    rewards: list[Any] | None = field(
        default=None,
        metadata={
            "help": "training rewards of the online objectives: names or {name, weight, options} (docs/rewards.md); default the run's BATON reward model"
        },
    )
    reward_aggregation: Literal["sum", "per_reward"] = field(
        default="sum", metadata={"help": "sum: weighted sum, then group-normalised; per_reward: each reward group-normalised, then weighted (GDPO)"}
    )
    on_bad_reward: Literal["skip", "stop"] = field(
        default="stop", metadata={"help": "a NaN or missing reward: stop the run naming the clip, or leave the clip out of its group (advantage 0)"}
    )
    group_size: int = field(default=4, metadata={"help": "online: clips per caption (a group); groups are never split across processes"})
    rollout_captions: int = field(default=4, metadata={"help": "online: captions per rollout over all processes (a multiple of the process count)"})
    rollout_steps: int = field(default=10, metadata={"help": "online: sampler steps of a rollout"})
    rollout_guidance_scale: float = field(default=3.0, metadata={"help": "online: classifier-free guidance of the rollouts (and of grpo's log-probabilities)"})
    rollout_eta: float | None = field(
        default=None, metadata={"help": "online: sampler noise; default grpo 1.0 (DDPM posterior) / 0.7 (flow SDE), awm and nft 0 (deterministic)"}
    )
    flow_noise: Literal["flow_grpo", "dance"] = field(default="flow_grpo", metadata={"help": "flow backends: Flow-GRPO's sigma_s or DanceGRPO's constant"})
    sde_window: list[int] | None = field(
        default=None, metadata={"help": "grpo: [start, end) sampler steps that are stochastic and trained (MixGRPO); default all"}
    )
    train_fraction: float = field(default=1.0, metadata={"help": "grpo: fraction of the stochastic steps trained per optimiser step (DanceGRPO ~0.6)"})
    shared_start_noise: bool = field(default=False, metadata={"help": "online: a group's clips start from the same noise (DanceGRPO)"})
    rollout_reuse: int = field(default=1, metadata={"help": "online: optimiser steps per rollout (> 1 makes the trust region matter)"})
    advantage_std: Literal["group", "global"] = field(default="group", metadata={"help": "online: normalise by the group's std or the whole rollout's"})
    advantage_clip: float = field(default=5.0, metadata={"help": "online: advantages clipped to [-a, a] (nft: its A_max)"})
    clip_range: float | None = field(default=None, metadata={"help": "grpo/awm: PPO clip range of the ratio (default grpo 1e-4, awm 1e-2)"})
    kl_beta: float = field(default=0.0, metadata={"help": "grpo: weight of the closed-form KL to the reference (base) model per trained step"})
    nft_beta: float = field(default=1.0, metadata={"help": "nft: the implicit policies' step b (not a KL weight)"})
    offload_copies: bool = field(
        default=False,
        metadata={
            "help": "full fine-tuning: keep the frozen reference (dpo, kto, grpo's KL) and the old policy (awm, nft) in CPU memory (LoRA keeps neither: its reference is the disabled adapter)"
        },
    )
    old_policy_decay: float = field(default=0.0, metadata={"help": "awm/nft: EMA decay of the old policy at each rollout (0: the sampling policy)"})
    eval_rewards: list[Any] | None = field(
        default=None, metadata={"help": "online: the judges (e.g. [oracle] in the toy world), kept apart from the training rewards; needs judge_every"}
    )
    judge_every: int = field(default=0, metadata={"help": "online: judge the policy every this many steps on fresh clips of the training captions (0: never)"})
    judge_captions: int = field(default=16, metadata={"help": "online: training captions the judge hears (the first ones, the same each time)"})
    judge_clips_per_caption: int = field(default=2, metadata={"help": "online: the judge's clips per caption (2 or more also logs their diversity_mel)"})
    judge_min_diversity: float = field(
        default=0.0,
        metadata={
            "help": "online: export the best judged weights among the steps whose judge clips keep at least this share of the untrained model's "
            "diversity_mel (step 0); 0: any step"
        },
    )
    stop_margin_se: float = field(
        default=1.0,
        metadata={"help": "online: stop when the judge falls by more than this many SEs while the training reward rises; the best judged weights are kept"},
    )
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder"})
    report_to: str | None = field(default="tensorboard", metadata={"help": "accelerate tracker, or none"})
    logging_steps: int = 1
    seed: int = 0

    def __post_init__(self):
        self.pretrain_batch_size = self.pretrain_batch_size or self.train_batch_size
        if self.report_to in ("none", ""):
            self.report_to = None
        for name in ("learning_rate", "pretrain_weight", "mix_ratio", "snr_gamma", "dpo_beta", "kto_beta", "kto_lambda_desirable", "kto_lambda_undesirable"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"config key '{name}' must be a finite number >= 0, got {value}")
        for name in ("min_reward_gap", "reward_top_fraction"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ValueError(f"config key '{name}' must be a finite number >= 0, got {value}")
        if not math.isfinite(self.reward_threshold):
            raise ValueError(f"config key 'reward_threshold' must be a finite number, got {self.reward_threshold}")
        if self.cfg_dropout is not None and not 0 <= self.cfg_dropout < 1:
            raise ValueError(f"config key 'cfg_dropout' must be a number in [0, 1), got {self.cfg_dropout}")
        from ..objectives import OBJECTIVES  # here: the objectives import the trainer's modules, which `--help` does not need

        if self.objective not in OBJECTIVES:
            raise ConfigError(f"config key 'objective' must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if OBJECTIVES[self.objective].needs_feedback and self.weighting == "none":
            raise ValueError(f"objective {self.objective!r} learns from the ratings: weighting 'none' leaves it nothing to learn from")
        if not 0 < self.train_fraction <= 1 or not 0 <= self.old_policy_decay < 1 or not self.advantage_clip > 0 or not self.nft_beta > 0:
            raise ValueError("config keys: train_fraction must be in (0, 1], old_policy_decay in [0, 1), advantage_clip and nft_beta > 0")
        if self.judge_every < 0 or (self.judge_every and not self.eval_rewards):
            raise ValueError(f"config key 'judge_every' ({self.judge_every}) needs eval_rewards (the judges) and must be >= 0")
        if not 0 <= self.judge_min_diversity <= 1 or (self.judge_min_diversity and (not self.judge_every or self.judge_clips_per_caption < 2)):
            raise ValueError(
                f"config key 'judge_min_diversity' ({self.judge_min_diversity}) must be in [0, 1] and needs judge_every and judge_clips_per_caption >= 2 "
                f"(got {self.judge_every}, {self.judge_clips_per_caption}): diversity is measured between a caption's clips"
            )
        if self.kl_beta < 0 or not math.isfinite(self.kl_beta) or (self.clip_range is not None and not self.clip_range > 0):
            raise ValueError(f"config keys: kl_beta must be >= 0 and clip_range > 0, got {self.kl_beta}, {self.clip_range}")
        for name in (
            "train_batch_size",
            "gradient_accumulation_steps",
            "num_epochs",
            "checkpointing_steps",
            "max_pairs_per_caption",
            "group_size",
            "rollout_captions",
            "rollout_steps",
            "rollout_reuse",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"config key '{name}' must be >= 1, got {getattr(self, name)}")

    def layout(self) -> RunLayout:
        return RunLayout.of(self.run_dir, aligned=self.output_dir, cache=self.cache_dir)

    def feedback_sources(self) -> tuple[str | None, str | None]:
        """(human-rated data, reward-rated data) to train on; None where a source is off or, for
        the reward-rated data by default, not there (a run without a label stage)."""
        layout = self.layout()
        human = None if self.feedback_dataset == "none" else str(self.feedback_dataset or layout.feedback)
        if self.reward_dataset == "none":
            reward = None
        elif self.reward_dataset:
            reward = self.reward_dataset
        else:
            reward = str(layout.reward_labeled) if layout.reward_labeled.exists() else None
        return human, reward


def load_training_data(config: FinetuneConfig, objective, latent_cache) -> tuple[EncodedSet | PairedSet | None, EncodedSet | None]:
    """The encoded feedback and pretraining data of a run: human-rated rows (or Audio-Alpaca-schema
    pairs) mixed with reward-rated ones, the objective's selection of them (`objective.select`:
    rows, weights w_i, pairs), and the pretraining set for the pretraining term."""
    import torch

    from ..data import load_pairwise_dataset, load_preference_dataset, load_pretrain_dataset, mix_feedback, pairwise_to_preference
    from ..latent_cache import PairedSet

    feedback = None
    if config.weighting != "none":
        human_source, reward_source = config.feedback_sources()
        if config.pairwise_dataset:  # Audio-Alpaca-schema pairs: chosen rated aligned, rejected not
            human = pairwise_to_preference(load_pairwise_dataset(config.pairwise_dataset), source=config.pairwise_dataset)
        else:  # origin: an unreadable clip is named by its dataset's row, not the row it is shuffled to
            human = load_preference_dataset(human_source, origin=True) if human_source else None
        reward = load_preference_dataset(reward_source, origin=True) if reward_source else None
        if human is None and reward is None:
            raise FileNotFoundError("no feedback data: feedback_dataset is 'none' and no reward_dataset is there")
        rated = reward if human is None else mix_feedback(human, reward, config.mix_ratio, config.seed)
        rows = objective.select(rated)
        feedback = latent_cache.encode(rows.dataset, rows.weights, "feedback")
        if rows.pairs:
            feedback = PairedSet(feedback.subset([chosen for chosen, _ in rows.pairs]), feedback.subset([rejected for _, rejected in rows.pairs]))
    pretrain = None
    if config.pretrain_weight > 0 and config.pretrain_dataset:
        ds = load_pretrain_dataset(config.pretrain_dataset)
        pretrain = latent_cache.encode(ds, torch.ones(len(ds)), "pretrain")
    if feedback is None and pretrain is None:
        raise ValueError("nothing to train on: weighting 'none' needs a pretrain_dataset and pretrain_weight > 0")
    return feedback, pretrain


def finetune(config: FinetuneConfig, backend=None) -> Path:
    """Feedback (+ reward-rated) clips and a pretrain set -> RUN/aligned/. `backend`: an already
    loaded model to train (an online round passes the previous round's), else `config.model`."""
    from ..backends.base import EXPORT_FILE
    from ..trainer import DiffusionTrainer

    trainer = DiffusionTrainer(config, backend=backend)
    out = trainer.train(*load_training_data(config, trainer.objective, trainer.latent_cache))
    trainer.accelerator.print(f"aligned model written to {out} ({EXPORT_FILE}: base {config.model})")
    return out
