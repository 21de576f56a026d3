"""Rollouts of the online objectives: the policy samples clips with a stochastic sampler whose every
step is Gaussian, so each step has a log-probability the policy gradient can push.

    sampler = PolicySampler(backend, draw, num_steps=10, guidance_scale=3.0, eta=1.0)
    rollout = sampler.sample(denoiser, captions, start_seeds, noise_seeds)   # no gradient
    log_p, means, stds = sampler.steps_log_prob(denoiser, rollout, [k])     # with gradient, step k

One sampler serves every backend, by the schedule the model was trained with (`backend.objective`):

    "ddpm"      (TANGO, AudioLDM 2)  DDIM's grid of the model's DDPM schedule; each step the DDIM
                                     step with stochasticity eta (`losses.vp_step`; eta 1 is the
                                     DDPM posterior, DDPO's sampler)
    "v_cosine"  (Stable Audio Open)  the same step on alpha = cos(pi t / 2), sigma = sin(pi t / 2)
    "flow"      (Stable Audio 3)     the Flow-GRPO SDE (`losses.flow_sde_step`; eta 0 is Euler), on
                                     a uniform grid of s with the scheduler's `shift`

Steps outside `sde_window` (MixGRPO) and steps of std 0 (a VP step to a clean level) are
deterministic: they have no log-probability and are not trained. The denoiser is called exactly as
training calls it (`DenoisingDraw.predict`), so the sampling policy and the trained policy are one
function; with guidance, the conditional and the null-conditioned halves (the backend's
`null_text`, as caption dropout trains it) go through in one batch.

Written here rather than taken from a pipeline: diffusers' schedulers return the next sample but
not the step's mean and std, which the log-probability needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .backends.base import TextConditioning, TextToAudioBackend
from .denoising import DenoisingDraw, Noised
from .losses import clean_and_noise, flow_sde_step, gaussian_log_prob, vp_step


def prediction_type(backend: TextToAudioBackend) -> str:
    """What the denoiser predicts: epsilon or v (DDPM backends, from the scheduler), v (the cosine
    schedule), or the flow velocity."""
    if backend.objective == "ddpm":
        return backend.noise_scheduler.config.prediction_type
    return {"v_cosine": "v_prediction", "flow": "flow"}[backend.objective]


def noise_levels(backend: TextToAudioBackend, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t) of training timesteps: x_t = alpha_t x0 + sigma_t eps, per clip (float32)."""
    if backend.objective == "ddpm":
        abar = backend.noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps.long()].float()
        return abar.sqrt(), (1 - abar).sqrt()
    t = timesteps.float()
    if backend.objective == "v_cosine":
        return torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2)
    return 1 - t, t


@dataclass
class SamplerGrid:
    """The sampler's K steps: what the denoiser is given (training timesteps), the noise levels at
    each step's start and end (x = alpha x0 + sigma eps), and each step's std (0: deterministic)."""

    timesteps: list
    alpha: list[float]
    sigma: list[float]
    alpha_next: list[float]
    sigma_next: list[float]
    std: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.timesteps)


@dataclass
class Rollout:
    """Clips sampled by the policy: their captions, the whole latent trajectory (N, K + 1, ...),
    x_K being the clean latents, each step's log-probability (N, K) under the sampling policy (0 on
    deterministic steps), and the conditioning (kept in memory only)."""

    captions: list[str]
    latents: torch.Tensor
    log_probs: torch.Tensor
    text: TextConditioning | None = None
    advantages: torch.Tensor | None = None  # set once the rewards are in (`objectives.online`)
    logs: dict = field(default_factory=dict)

    @property
    def clean(self) -> torch.Tensor:
        return self.latents[:, -1]


class PolicySampler:
    """The stochastic sampler of the online objectives, for any backend (see the module docstring)."""

    def __init__(
        self,
        backend: TextToAudioBackend,
        draw: DenoisingDraw,
        num_steps: int,
        guidance_scale: float,
        eta: float,
        flow_noise: str = "flow_grpo",
        sde_window: tuple[int, int] | None = None,
        duration_s: float | None = None,
    ):
        if num_steps < 1:
            raise ValueError(f"rollout_steps must be >= 1, got {num_steps}")
        if not math.isfinite(guidance_scale) or not math.isfinite(eta) or eta < 0:
            raise ValueError(f"rollout guidance scale and eta must be finite (eta >= 0), got {guidance_scale}, {eta}")
        self.backend, self.draw = backend, draw
        self.guidance_scale, self.eta, self.flow_noise = float(guidance_scale), float(eta), flow_noise
        self.duration_s = duration_s or backend.duration_s
        self.prediction_type = prediction_type(backend)
        window = sde_window or (0, num_steps)
        if not 0 <= window[0] < window[1] <= num_steps:
            raise ValueError(f"sde_window {list(window)} must satisfy 0 <= start < end <= rollout_steps ({num_steps})")
        self.window = tuple(window)
        self.grid = self._grid(num_steps)
        self._shape: tuple[int, ...] | None = None

    # -- the grid --------------------------------------------------------------------------------

    def _grid(self, num_steps: int) -> SamplerGrid:
        backend = self.backend
        if backend.objective == "ddpm":
            from diffusers import DDIMScheduler  # the DDIM grid of the model's own DDPM schedule (the toy's `sampler: ddim`)

            ddim = DDIMScheduler.from_config(backend.noise_scheduler.config)
            ddim.set_timesteps(num_steps)
            abar = ddim.alphas_cumprod
            stride = ddim.config.num_train_timesteps // num_steps
            timesteps = [int(t) for t in ddim.timesteps]
            abar_now = [float(abar[t]) for t in timesteps]
            abar_next = [float(abar[t - stride]) if t - stride >= 0 else float(ddim.final_alpha_cumprod) for t in timesteps]
            alpha, sigma = [math.sqrt(a) for a in abar_now], [math.sqrt(1 - a) for a in abar_now]
            alpha_next, sigma_next = [math.sqrt(a) for a in abar_next], [math.sqrt(max(1 - a, 0.0)) for a in abar_next]
        elif backend.objective in ("v_cosine", "flow"):
            levels = np.linspace(1.0, 0.0, num_steps + 1)
            if backend.objective == "flow":
                shift = float(backend.flow_shift or getattr(backend.noise_scheduler, "config", {}).get("shift", 1.0) or 1.0)
                levels = shift * levels / (1 + (shift - 1) * levels)
                alpha_all, sigma_all = 1 - levels, levels
            else:
                alpha_all, sigma_all = np.cos(levels * math.pi / 2), np.sin(levels * math.pi / 2)
            timesteps = [float(t) for t in levels[:-1]]
            alpha, sigma = [float(a) for a in alpha_all[:-1]], [float(s) for s in sigma_all[:-1]]
            alpha_next, sigma_next = [float(a) for a in alpha_all[1:]], [float(s) for s in sigma_all[1:]]
        else:
            raise ValueError(f"no rollout sampler for training objective {backend.objective!r}")
        grid = SamplerGrid(timesteps, alpha, sigma, alpha_next, sigma_next)
        probe = torch.zeros(1, 1)
        grid.std = [self._mean_and_std(probe, probe, k, grid)[1] for k in range(num_steps)]
        return grid

    def stochastic_steps(self) -> list[int]:
        """The steps with a log-probability: inside the window and of std > 0 (the trained steps)."""
        return [k for k in range(len(self.grid)) if self.grid.std[k] > 0]

    # -- one step --------------------------------------------------------------------------------

    def _mean_and_std(self, prediction: torch.Tensor, latents: torch.Tensor, k: int, grid: SamplerGrid | None = None) -> tuple[torch.Tensor, float]:
        grid = grid or self.grid
        eta = self.eta if self.window[0] <= k < self.window[1] else 0.0
        if self.backend.objective == "flow":
            s, s_next = grid.sigma[k], grid.sigma_next[k]
            s_cap = grid.sigma[1] if len(grid) > 1 else None
            return flow_sde_step(latents, prediction, s, s_next, eta, self.flow_noise, s_cap)
        x0_hat, eps_hat = clean_and_noise(prediction, latents, self.prediction_type, grid.alpha[k], grid.sigma[k])
        return vp_step(x0_hat, eps_hat, grid.alpha[k], grid.sigma[k], grid.alpha_next[k], grid.sigma_next[k], eta)

    def timesteps(self, ks: list[int], n: int, device) -> torch.Tensor:
        """The denoiser's timesteps for n clips at each step of `ks`, step-major."""
        values = [self.grid.timesteps[k] for k in ks for _ in range(n)]
        return torch.tensor(values, dtype=torch.long if isinstance(values[0], int) else torch.float32, device=device)

    def prediction(self, denoiser: torch.nn.Module, latents: torch.Tensor, timesteps: torch.Tensor, text: TextConditioning) -> torch.Tensor:
        """The denoiser's (guided) prediction, called as training calls it: with guidance, the
        conditional and null-conditioned halves in one batch."""
        n = latents.shape[0]
        if self.guidance_scale == 1.0:
            return self.draw.predict(denoiser, Noised(latents, None, timesteps, text)).float()
        both = TextConditioning.cat([text, self.draw.drop_captions(text, torch.ones(n, dtype=torch.bool, device=latents.device))])
        out = self.draw.predict(denoiser, Noised(torch.cat([latents, latents]), None, torch.cat([timesteps, timesteps]), both)).float()
        conditional, unconditional = out.chunk(2)
        return unconditional + self.guidance_scale * (conditional - unconditional)

    def step_distribution(self, denoiser: torch.nn.Module, latents: torch.Tensor, k: int, text: TextConditioning) -> tuple[torch.Tensor, float]:
        """The mean and std of step k from `latents` under `denoiser`."""
        prediction = self.prediction(denoiser, latents, self.timesteps([k], latents.shape[0], latents.device), text)
        return self._mean_and_std(prediction, latents.float(), k)

    def steps_distribution(self, denoiser: torch.nn.Module, rollout: Rollout, ks: list[int]) -> tuple[list[torch.Tensor], list[float]]:
        """The means and stds of the rollout's steps `ks` under `denoiser`, in one denoiser call
        (one forward per micro-step: what DDP expects)."""
        latents = rollout.latents.to(self.draw.accelerator.device)
        n = latents.shape[0]
        x = torch.cat([latents[:, k] for k in ks])
        text = rollout.text[torch.arange(n).repeat(len(ks))]
        prediction = self.prediction(denoiser, x, self.timesteps(ks, n, x.device), text)
        means, stds = [], []
        for j, k in enumerate(ks):
            mean, std = self._mean_and_std(prediction[j * n : (j + 1) * n], x[j * n : (j + 1) * n].float(), k)
            means.append(mean)
            stds.append(std)
        return means, stds

    def steps_log_prob(self, denoiser: torch.nn.Module, rollout: Rollout, ks: list[int]) -> tuple[torch.Tensor, list[torch.Tensor], list[float]]:
        """log p(x_{k+1} | x_k) of the rollout's steps `ks` under `denoiser` (with gradient),
        shape (len(ks), N), with the steps' means and stds."""
        if any(self.grid.std[k] <= 0 for k in ks):
            raise ValueError(f"steps {ks}: a deterministic step has no log-probability (train only `stochastic_steps()`)")
        means, stds = self.steps_distribution(denoiser, rollout, ks)
        latents = rollout.latents.to(self.draw.accelerator.device)
        return torch.stack([gaussian_log_prob(latents[:, k + 1], mean, std) for k, mean, std in zip(ks, means, stds)]), means, stds

    # -- a rollout -------------------------------------------------------------------------------

    def latent_shape(self) -> tuple[int, ...]:
        if self._shape is None:
            self._shape = self.backend.latent_shape(self.duration_s)
        return self._shape

    @torch.no_grad()
    def sample(self, denoiser: torch.nn.Module, captions: list[str], start_seeds: list[int], noise_seeds: list[int]) -> Rollout:
        """Clips for `captions`: the starting noise of clip i from `start_seeds[i]` (equal seeds in a
        group give DanceGRPO's shared start), each stochastic step's noise from `noise_seeds[i]`."""
        if not (len(captions) == len(start_seeds) == len(noise_seeds)):
            raise ValueError(f"{len(captions)} captions, {len(start_seeds)} start seeds, {len(noise_seeds)} noise seeds")
        device, shape = self.draw.accelerator.device, self.latent_shape()
        text = self.backend.encode_text(list(captions), self.duration_s).to(device, self.draw.weight_dtype)
        x = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in start_seeds]).to(device)
        noise_generators = [torch.Generator().manual_seed(int(s)) for s in noise_seeds]
        trajectory, log_probs = [x], []
        for k in range(len(self.grid)):
            mean, std = self.step_distribution(denoiser, x, k, text)
            if std > 0:
                noise = torch.stack([torch.randn(shape, generator=g) for g in noise_generators]).to(device)
                x = mean + std * noise
                log_probs.append(gaussian_log_prob(x, mean, std))
            else:
                x = mean
                log_probs.append(torch.zeros(x.shape[0], device=device))
            trajectory.append(x)
        return Rollout(list(captions), torch.stack(trajectory, dim=1), torch.stack(log_probs, dim=1), text)
