"""The training objectives: BATON (Liao et al., IJCAI 2024, arXiv 2402.00744, Eq. 7), and below it
Diffusion-DPO and Diffusion-KTO on the same ratings.

For a feedback batch of B clips with weights w_i and a pretrain batch of B' clips:

    l_i = snr_weight(t_i) * mean over latent dims of (denoiser(z_t, t, text) - target)^2
    L   = (1/B) * sum_i w_i * l_i  +  pretrain_weight * (1/B') * sum_j l_j

w_i is the human label (0/1) for human-rated clips and the reward model's score for the rest;
pretrain_weight is the paper's beta (0.5). Each objective is a class in `baton_trainer.objectives`
that calls one of these functions.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

SnrMode = Literal["none", "min_snr", "tango"]
Objective = Literal["ddpm", "v_cosine", "flow"]


def denoising_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the denoiser is trained to predict: the noise (epsilon) or the velocity (v).

    v = sqrt(abar_t) * eps - sqrt(1 - abar_t) * z0, as `scheduler.get_velocity` computes it.
    """
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported scheduler prediction_type '{prediction_type}' (expected epsilon or v_prediction)")


def noised_latents_and_target(objective: Objective, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, scheduler=None):
    """The denoiser's input x_t and its regression target, for the objective the model was trained with.

    - "ddpm" (TANGO, AudioLDM 2): integer t of the DDPM `scheduler`;
      x_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, target eps or v (`denoising_target`).
    - "v_cosine" (Stable Audio; stable-audio-tools' "v" objective): t in [0, 1],
      alpha = cos(pi t / 2), sigma = sin(pi t / 2); x_t = alpha z0 + sigma eps, target v = alpha eps - sigma z0.
    - "flow" (rectified flow): t in [0, 1]; x_t = (1 - t) z0 + t eps, target the velocity eps - z0.
    """
    if objective == "ddpm":
        return scheduler.add_noise(latents, noise, timesteps), denoising_target(scheduler, latents, noise, timesteps)
    t = timesteps.to(torch.float32).reshape(-1, *[1] * (latents.ndim - 1))
    if objective == "v_cosine":
        alpha, sigma = torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2)
        return alpha * latents + sigma * noise, alpha * noise - sigma * latents
    if objective == "flow":
        return (1 - t) * latents + t * noise, noise - latents
    raise ValueError(f"unknown training objective {objective!r} (expected ddpm, v_cosine or flow)")


def snr_weights(scheduler, timesteps: torch.Tensor, gamma: float = 5.0, mode: SnrMode = "min_snr") -> torch.Tensor:
    """Per-sample loss weights from the timestep's SNR.

    - "none": all ones.
    - "min_snr": Min-SNR-gamma (Hang et al. 2023) in the form that matches the target:
      min(snr, gamma) / snr for epsilon, min(snr, gamma) / (snr + 1) for v.
    - "tango": min(snr, gamma) / snr whatever the target, as TANGO trained its v-prediction
      model; fine-tuning TANGO with it continues the objective it was trained with.
    """
    if mode == "none":
        return torch.ones(timesteps.shape[0], dtype=torch.float32, device=timesteps.device)
    from diffusers.training_utils import compute_snr  # lazy: keeps `--help` fast (the CLI imports this module)

    ratio = compute_snr(scheduler, timesteps)  # abar_t / (1 - abar_t), in float32
    clipped = torch.clamp(ratio, max=gamma)
    if mode == "tango":
        return clipped / ratio
    if mode == "min_snr":
        if scheduler.config.prediction_type == "v_prediction":
            return clipped / (ratio + 1.0)
        return clipped / ratio
    raise ValueError(f"unknown snr weighting mode '{mode}' (expected none, min_snr or tango)")


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every non-batch dimension, in float32: shape (batch,)."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def baton_loss(
    pred_fb: torch.Tensor | None,
    target_fb: torch.Tensor | None,
    weights: torch.Tensor | None,
    pred_pt: torch.Tensor | None = None,
    target_pt: torch.Tensor | None = None,
    pretrain_weight: float = 0.5,
    snr_fb: torch.Tensor | None = None,
    snr_pt: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reward-weighted denoising loss plus `pretrain_weight` (the paper's beta) times the plain
    pretraining loss (Eq. 7):

        L = (1/B) * sum_i w_i * l_i  +  pretrain_weight * (1/B') * sum_j l_j

    `snr_fb` / `snr_pt` are per-sample SNR weights (from `snr_weights`), ones when omitted. Without
    `pred_fb` the feedback term is absent (the pretraining-term-alone ablation); without `pred_pt`
    the pretraining term is. Returns `(loss, logs)`; `logs` holds the terms as floats for tracking.
    """
    if pred_fb is None and pred_pt is None:
        raise ValueError("baton_loss needs a feedback batch, a pretraining batch, or both")
    loss, logs = None, {}
    if pred_fb is not None:
        if weights is None or weights.ndim != 1 or weights.shape[0] != pred_fb.shape[0]:
            raise ValueError(f"weights must have shape ({pred_fb.shape[0]},), got {None if weights is None else tuple(weights.shape)}")
        mse_fb = per_sample_mse(pred_fb, target_fb)
        if snr_fb is not None:
            mse_fb = mse_fb * snr_fb.float()
        loss = (weights.float() * mse_fb).mean()
        logs = {"loss_feedback": loss.detach().item(), "mean_weight": weights.float().mean().item()}
    if pred_pt is not None:
        if target_pt is None:
            raise ValueError("pred_pt given without target_pt")
        mse_pt = per_sample_mse(pred_pt, target_pt)
        if snr_pt is not None:
            mse_pt = mse_pt * snr_pt.float()
        pretrain_term = mse_pt.mean()
        loss = pretrain_weight * pretrain_term if loss is None else loss + pretrain_weight * pretrain_term
        logs["loss_pretrain"] = pretrain_term.detach().item()
    logs["loss"] = loss.detach().item()
    return loss, logs


# -- objectives that learn from the same ratings (docs/method.md) ---------------------------------
# Each takes per-sample denoising losses l = per_sample_mse(pred, target) (times the SNR weight
# where the model trains with one) of the trained model and of a frozen reference (the base model)
# at the same noise and timestep, and returns (loss, logs). BATON's pretraining term is added on
# top by the objective as for Eq. 7: loss + pretrain_weight * mean_j l_j.


def dpo_loss(model_w: torch.Tensor, model_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, dpo_beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Diffusion-DPO (Wallace et al. 2023, arXiv 2311.12908) on (preferred w, rejected l) pairs of
    one caption, both noised with the same eps at the same t:

        inside = -0.5 * dpo_beta * ((l_theta(w) - l_theta(l)) - (l_ref(w) - l_ref(l)))
        L_DPO  = -mean(log sigmoid(inside))

    Lowering the preferred clip's error relative to the reference lowers the loss. dpo_beta is large
    (thousands) because the per-sample losses are small.
    """
    if not (model_w.shape == model_l.shape == ref_w.shape == ref_l.shape) or model_w.ndim != 1:
        raise ValueError(f"DPO needs four (pairs,) loss vectors, got {[tuple(t.shape) for t in (model_w, model_l, ref_w, ref_l)]}")
    model_diff = model_w.float() - model_l.float()
    ref_diff = (ref_w.float() - ref_l.float()).detach()
    inside = -0.5 * dpo_beta * (model_diff - ref_diff)
    loss = -torch.nn.functional.logsigmoid(inside).mean()
    logs = {
        "loss_dpo": loss.detach().item(),
        "dpo_accuracy": (inside > 0).float().mean().item(),  # pairs where the model prefers w more than the reference does
        "implicit_margin": (ref_diff - model_diff).detach().mean().item(),
    }
    return loss, logs


def kto_loss(
    model: torch.Tensor,
    ref: torch.Tensor,
    desirable: torch.Tensor,
    kto_beta: float,
    lambda_desirable: float = 1.0,
    lambda_undesirable: float = 1.0,
    reference_point: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Diffusion-KTO (Li et al. 2024, arXiv 2404.04465) on clips rated aligned (desirable) or not:

        r_i   = l_ref(x_i) - l_theta(x_i)                (the implicit reward: how much the model improved on x_i)
        z_ref = max(0, mean_batch r).detach()             (the reference point, the authors' default estimate)
        h_i   = sigmoid(s_i * kto_beta * (r_i - z_ref)),  s_i = +1 desirable, -1 undesirable
        L_KTO = mean_i lambda_{y_i} * (1 - h_i)

    `reference_point` overrides z_ref; pass the mean over every process's batch when training on
    several (the authors all-reduce it), so the loss does not depend on the process count.
    """
    if model.shape != ref.shape or model.shape != desirable.shape or model.ndim != 1:
        raise ValueError(f"KTO needs three (clips,) vectors, got {[tuple(t.shape) for t in (model, ref, desirable)]}")
    reward = ref.float().detach() - model.float()
    if reference_point is None:
        reference_point = reward.mean().detach().clamp(min=0)
    z_ref = torch.as_tensor(reference_point, dtype=torch.float32, device=reward.device).detach()
    desirable = desirable.bool()
    sign = desirable.float() * 2 - 1
    h = torch.sigmoid(sign * kto_beta * (reward - z_ref))
    weight = torch.where(desirable, torch.tensor(float(lambda_desirable)), torch.tensor(float(lambda_undesirable))).to(reward.device)
    loss = (weight * (1 - h)).mean()
    logs = {"loss_kto": loss.detach().item(), "kto_reference_point": float(z_ref), "implicit_reward": reward.detach().mean().item()}
    return loss, logs
