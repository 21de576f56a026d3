"""The objective contract: what an objective trains on, how its loss is formed, what it keeps.

The trainer (`baton_trainer.trainer`) runs one loop for every objective and never asks which one
it runs. It calls, in this order:

    objective.attach(denoiser, draw)       once, after the denoiser is made trainable: build state
                                           (a frozen reference copy, an EMA copy, ...)
    objective.begin(denoiser, feedback)    once per training run, with the encoded feedback data:
                                           open caches keyed by that data
    loss, logs = objective.loss(denoiser, feedback, pretrain, step, micro)
                                           every micro-step: the loss to back-propagate and the
                                           floats to log
    objective.end_of_step(denoiser, step)  after every optimiser step: True stops the run
    objective.save()                       at every checkpoint and at the end: flush what it keeps
    objective.finish(denoiser)             once, before the export

The data an objective trains on is chosen before the trainer starts, by the fine-tune stage, which
calls `objective.select(rated)` on the mixed human- and reward-rated rows (`FeedbackRows`: the
rows, their weights w_i, and for pairwise objectives the (chosen, rejected) row pairs).

Every objective also gets BATON's pretraining term (Eq. 7's second term): `pretrain_weight` times
the mean denoising error on a batch of pretraining clips, so that objectives are compared with the
same anchor to the model's own data. `pretraining_noised` draws its batch through the shared
`DenoisingDraw`, as every other batch is drawn; `with_pretraining` adds the term.

A new objective is one class with a `name`, registered in `baton_trainer/objectives/__init__.py`;
`docs/architecture.md` walks through the smallest one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..denoising import PRETRAIN_STREAM, DenoisingDraw, Noised
from ..latent_cache import EncodedSet, PairedSet


@dataclass
class FeedbackRows:
    """The rated rows an objective trains on: a `datasets.Dataset` of preference rows, one weight
    per row, and for pairwise objectives (chosen row, rejected row) pairs of one caption each."""

    dataset: Any
    weights: torch.Tensor
    pairs: list[tuple[int, int]] | None = None


class Objective:
    """Base of every fine-tuning objective. `config` is the fine-tune stage's `FinetuneConfig`."""

    name: ClassVar[str]
    # True for objectives that cannot run without rated feedback (they learn from the ratings alone).
    needs_feedback: ClassVar[bool] = True

    def __init__(self, config):
        self.config = config
        self.draw: DenoisingDraw | None = None

    # -- data ------------------------------------------------------------------------------------

    def select(self, rated) -> FeedbackRows:
        """The rows to train on and their weights w_i: by default every row, weighted by its
        reward (the human label for human-rated rows), or by ones with `weighting: ones`."""
        weights = torch.tensor(rated["reward"], dtype=torch.float32)
        if self.config.weighting == "ones":
            weights = torch.ones_like(weights)
        return FeedbackRows(rated, weights)

    # -- state -----------------------------------------------------------------------------------

    def attach(self, denoiser: torch.nn.Module, draw: DenoisingDraw) -> None:
        """Called once the denoiser is trainable and before accelerate wraps it."""
        self.draw = draw

    def training_steps(self, feedback: EncodedSet | PairedSet | None, pretrain: EncodedSet | None) -> int | None:
        """Optimiser steps of a run without `max_train_steps`; None: the trainer's passes over the data."""
        return None

    def begin(self, denoiser, feedback: EncodedSet | PairedSet | None) -> None:
        """Called at the start of `train` with the encoded feedback data."""

    def end_of_step(self, denoiser, step: int) -> bool:
        """Called after optimiser step `step` (1-based; 0: before the first step of a fresh run) on
        every process; True stops the run (the online objectives' held-out judge stops a run whose
        reward is being hacked)."""
        return False

    def finish(self, denoiser) -> None:
        """Called once before the export (the online objectives put back the best judged weights)."""

    def save(self) -> None:
        """Called at every checkpoint (on every process) and at the end of training."""

    def save_state(self, folder: Path) -> None:
        """Called on every process when a checkpoint is written into `folder`: what the objective
        holds beyond the weights and the optimiser (the online objectives' old policy and judge)."""

    def load_state(self, folder: Path) -> None:
        """Called on every process after the trainer resumed from the checkpoint `folder`."""

    # -- the loss --------------------------------------------------------------------------------

    def loss(
        self, denoiser, feedback: EncodedSet | PairedSet | None, pretrain: EncodedSet | None, step: int, micro: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def pretraining_noised(self, pretrain: EncodedSet | None, step: int, micro: int) -> Noised | None:
        """This micro-step's pretraining batch, noised (Eq. 7's second term is the denoiser's error
        on it), or None without pretraining data."""
        if pretrain is None:
            return None
        batch = self.draw.batch(pretrain, step, micro, self.config.pretrain_batch_size, PRETRAIN_STREAM)
        return self.draw.noised(batch, step, micro, PRETRAIN_STREAM)

    def with_pretraining(self, loss: torch.Tensor, logs: dict[str, float], denoiser, pretrain, step: int, micro: int) -> tuple[torch.Tensor, dict[str, float]]:
        """`loss + pretrain_weight * mean_j l_j` over the pretraining batch, with both logged."""
        noised = self.pretraining_noised(pretrain, step, micro)
        if noised is not None:
            term = self.draw.errors(denoiser, noised).mean()
            loss = loss + self.config.pretrain_weight * term
            logs["loss_pretrain"] = term.detach().item()
        logs["loss"] = loss.detach().item()
        return loss, logs
