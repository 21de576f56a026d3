"""The denoising draw: every random choice of a fine-tuning step and the denoiser calls, in one place.

Every objective trains on the same kind of step: take this process's rows of the global batch, noise
their latents at timesteps from the model's training distribution, sometimes drop the caption (for
classifier-free guidance), ask the denoiser (and, for some objectives, a reference) for its
prediction, and weight the error by the timestep's SNR. `DenoisingDraw` does exactly that and
nothing else; the objectives (`baton_trainer.objectives`) turn its per-clip errors into losses.

Randomness comes from a fresh generator per (seed, step, stream), never from the global RNG, so a
run resumed from a checkpoint takes exactly the steps an uninterrupted run takes, and N processes
with batch B take the same steps as one process with batch N * B: rows, noise and timesteps are
drawn over the global batch and each process takes its slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .backends.base import TextConditioning, TextToAudioBackend
from .latent_cache import EncodedSet
from .losses import noised_latents_and_target, per_sample_mse, snr_weights

# Streams keep the draws of different data apart within one step: the feedback batch and the
# pretraining batch never share rows, noise or timesteps.
FEEDBACK_STREAM, PRETRAIN_STREAM = 0, 1


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A fresh generator per (seed, step, stream): randomness does not depend on what ran before,
    which makes resumption and multi-process runs reproduce single-process runs exactly."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + stream) % (2**63 - 1))


@dataclass
class Batch:
    """This process's rows of a step's batch: latents, caption conditioning and feedback weights."""

    latents: torch.Tensor
    text: TextConditioning
    weights: torch.Tensor


@dataclass
class Noised:
    """A batch noised for one denoising step: the denoiser's input, its target, the timesteps and
    the conditioning (some captions replaced by the null conditioning)."""

    noisy: torch.Tensor
    target: torch.Tensor
    timesteps: torch.Tensor
    text: TextConditioning


class DenoisingDraw:
    """Batches, noise, timesteps, caption dropout, predictions and SNR weights for a fine-tuning run.

    `seed` seeds every draw; `accumulation` is the number of micro-steps per optimiser step (a
    micro-step's draws are indexed by step * accumulation + micro); `cfg_dropout` is the chance a
    caption is replaced by the null conditioning; `snr_mode`/`snr_gamma` weight DDPM timesteps
    (`losses.snr_weights`); `weight_dtype` is the frozen modules' dtype and `input_dtype` the
    denoiser's input dtype.
    """

    def __init__(
        self,
        backend: TextToAudioBackend,
        accelerator,
        *,
        seed: int,
        accumulation: int,
        cfg_dropout: float,
        snr_mode: str,
        snr_gamma: float,
        weight_dtype: torch.dtype,
        input_dtype: torch.dtype,
        duration_s: float,
    ):
        if snr_mode != "none" and backend.objective != "ddpm":
            raise ValueError(
                f"snr_mode {snr_mode!r} weights DDPM timesteps; {type(backend).__name__} trains with the {backend.objective} objective: use snr_mode none"
            )
        self.backend, self.accelerator = backend, accelerator
        self.seed, self.accumulation = seed, accumulation
        self.cfg_dropout, self.snr_mode, self.snr_gamma = cfg_dropout, snr_mode, snr_gamma
        self.weight_dtype, self.input_dtype, self.duration_s = weight_dtype, input_dtype, duration_s
        self._null_text: TextConditioning | None = None

    def micro_index(self, step: int, micro: int) -> int:
        return step * self.accumulation + micro

    def batch(self, data: EncodedSet, step: int, micro: int, per_process: int, stream: int) -> Batch:
        """This process's slice of the global batch for (step, micro-step): a seeded permutation
        per epoch over the whole set, cut into global batches of per_process * num_processes."""
        acc = self.accelerator
        global_batch = per_process * acc.num_processes
        per_epoch = max(1, len(data) // global_batch)
        epoch, position = divmod(self.micro_index(step, micro), per_epoch)
        order = torch.randperm(len(data), generator=step_generator(self.seed, epoch, stream))
        if len(data) < global_batch:  # tiny sets: repeat to fill the batch
            order = order.repeat(math.ceil(global_batch / len(data)))
        chosen = order[position * global_batch : (position + 1) * global_batch]
        mine = chosen[acc.process_index * per_process : (acc.process_index + 1) * per_process]
        if data.latents is not None:
            latents, text = data.latents[mine], data.text[mine]
        else:  # the latent cache is off: encode this batch now
            with torch.no_grad():
                latents = self.backend.encode_audio(data.waveforms[mine].to(acc.device)).float()
                rows = mine.tolist()
                text = self.backend.encode_text([data.captions[i] for i in rows], self.duration_s, lyrics=data.lyrics and [data.lyrics[i] for i in rows])
        return Batch(latents.to(acc.device), text.to(acc.device, self.weight_dtype), data.weights[mine].to(acc.device))

    def noised(self, batch: Batch, step: int, micro: int, stream: int, pairs: bool = False) -> Noised:
        """Noise the batch's latents at timesteps from the model's training distribution (drawn
        over the global batch, so the process count does not change them); with `pairs`, the two
        halves of the batch (preferred, rejected) share their noise, timestep and caption dropout."""
        acc, backend, latents = self.accelerator, self.backend, batch.latents
        n_local = latents.shape[0] // 2 if pairs else latents.shape[0]
        n_global = n_local * acc.num_processes
        gen = step_generator(self.seed + 1, self.micro_index(step, micro), stream)
        noise = torch.randn((n_global, *latents.shape[1:]), generator=gen)
        timesteps = backend.draw_timesteps(n_global, gen)
        rank = slice(acc.process_index * n_local, (acc.process_index + 1) * n_local)
        noise, timesteps = noise[rank].to(latents.device), timesteps[rank].to(latents.device)
        dropped = (torch.rand(n_global, generator=gen) < self.cfg_dropout)[rank] if self.cfg_dropout > 0 else None
        if pairs:
            noise, timesteps = torch.cat([noise, noise]), torch.cat([timesteps, timesteps])
            dropped = None if dropped is None else torch.cat([dropped, dropped])
        text = batch.text
        if dropped is not None:  # classifier-free-guidance training: some captions become the null conditioning
            text = self.drop_captions(text, dropped.to(latents.device))
        noisy, target = noised_latents_and_target(backend.objective, latents, noise, timesteps, backend.noise_scheduler)
        return Noised(noisy, target, timesteps, text)

    def drop_captions(self, text: TextConditioning, dropped: torch.Tensor) -> TextConditioning:
        """`text` with the rows of `dropped` replaced by the backend's null conditioning."""
        if not dropped.any():
            return text
        if self._null_text is None:
            with torch.no_grad():
                self._null_text = self.backend.null_text(self.duration_s)
        return self.backend.drop_captions(text, dropped, self._null_text.to(dropped.device, self.weight_dtype))

    def predict(self, denoiser: torch.nn.Module, noised: Noised) -> torch.Tensor:
        """The denoiser's prediction (epsilon, v or velocity, as the model was trained) on `noised`."""
        with self.accelerator.autocast():
            return self.backend.predict(denoiser, noised.noisy.to(self.input_dtype), noised.timesteps, noised.text)

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor | None:
        """Per-clip SNR loss weights, or None when the model trains without them."""
        return None if self.snr_mode == "none" else snr_weights(self.backend.noise_scheduler, timesteps, self.snr_gamma, self.snr_mode)

    def errors(self, denoiser: torch.nn.Module, noised: Noised) -> torch.Tensor:
        """Per-clip denoising errors, SNR-weighted: l_i = snr_weight(t_i) * mean over latent dims of (pred - target)^2."""
        errors = per_sample_mse(self.predict(denoiser, noised), noised.target)
        snr = self.snr(noised.timesteps)
        return errors if snr is None else errors * snr.float()
