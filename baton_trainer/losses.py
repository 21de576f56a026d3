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


# -- online policy optimisation (docs/online.md) --------------------------------------------------
# The policy samples G clips per caption; a reward scores them; each clip's advantage says how much
# better than its group it was. A sampler step x -> x' is Gaussian, N(mean_theta(x), std^2 I), so
# it has a log-probability the policy gradient can push. Log-probabilities and KLs are averaged
# over the latent's dimensions (Flow-GRPO's convention): clip ranges are on that scale.


def group_advantages(
    rewards: torch.Tensor, groups: torch.Tensor, std_scope: Literal["group", "global"] = "group", clip: float = 5.0, eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-normalised advantages (GRPO, Shao et al. 2024, arXiv 2402.03300; Flow-GRPO):

        A_i = clip((r_i - mean_{j in g(i)} r_j) / (std + eps), -clip, clip)

    std is the population std of the clip's group (`std_scope="group"`) or of the whole batch
    (`"global"`). A group whose rewards are all equal carries no signal: its advantages are exactly
    0 and `zero_spread[i]` is True for its clips (log the fraction: many such groups mean the
    reward cannot tell the policy's clips apart). Returns `(advantages, zero_spread)`, both (N,).
    """
    rewards = rewards.double()
    if rewards.ndim != 1 or groups.shape != rewards.shape:
        raise ValueError(f"rewards and groups must be (N,) vectors, got {tuple(rewards.shape)} and {tuple(groups.shape)}")
    advantages = torch.zeros_like(rewards)
    zero_spread = torch.zeros(rewards.shape, dtype=torch.bool, device=rewards.device)
    global_std = rewards.std(unbiased=False) if rewards.numel() > 1 else rewards.new_zeros(())
    for group in groups.unique():
        rows = groups == group
        values = rewards[rows]
        if bool((values == values[0]).all()):
            zero_spread[rows] = True
            continue
        std = values.std(unbiased=False) if std_scope == "group" else global_std
        advantages[rows] = (values - values.mean()) / (std + eps)
    return advantages.clamp(-clip, clip).float(), zero_spread


def gaussian_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """log N(sample; mean, std^2 I) per clip, averaged over the non-batch dimensions:

        log p = mean_d [ -(x_d - mu_d)^2 / (2 std^2) - log std - log sqrt(2 pi) ]

    `std` is a number or a tensor broadcastable to the sample (one value per clip). Shape (N,)."""
    std = torch.as_tensor(std, dtype=torch.float32, device=sample.device)
    if std.ndim == 1:
        std = std.reshape(-1, *[1] * (sample.ndim - 1))
    sample, mean = sample.float(), mean.float()
    log_density = -((sample - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return log_density.flatten(1).mean(dim=1)


def flow_sde_step(
    latents: torch.Tensor,
    velocity: torch.Tensor,
    s: float,
    s_next: float,
    eta: float,
    noise_schedule: Literal["flow_grpo", "dance"] = "flow_grpo",
    s_cap: float | None = None,
) -> tuple[torch.Tensor, float]:
    """The mean and std of one stochastic step of a rectified-flow sampler, from noise level s to
    s_next < s (x_s = (1 - s) x0 + s eps, v = eps - x0, ds = s_next - s < 0): the reverse SDE with
    the same marginals as the flow ODE (Flow-GRPO, arXiv 2505.05470, Eq. 9, Euler-Maruyama):

        mean = x_s + [ v + sigma_s^2 / (2 s) * (x_s + (1 - s) v) ] ds
        std  = sigma_s * sqrt(-ds)

    with sigma_s = eta * sqrt(s / (1 - s)) (`"flow_grpo"`; s in the denominator capped at `s_cap`,
    the grid's second level, so the first step from s = 1 stays finite) or sigma_s = eta
    (`"dance"`, DanceGRPO, arXiv 2505.07818). eta = 0 is the deterministic Euler step
    x_s + v ds. Returns `(mean, std)`."""
    ds = s_next - s
    if ds >= 0:
        raise ValueError(f"flow steps go from noise to data: s_next {s_next} must be below s {s}")
    if noise_schedule == "flow_grpo":
        capped = min(s, s_cap) if s_cap is not None else s
        sigma = eta * math.sqrt(capped / (1 - capped)) if capped < 1 else float("inf")
    elif noise_schedule == "dance":
        sigma = eta
    else:
        raise ValueError(f"unknown flow noise schedule {noise_schedule!r} (expected flow_grpo or dance)")
    latents, velocity = latents.float(), velocity.float()
    mean = latents + (velocity + sigma**2 / (2 * s) * (latents + (1 - s) * velocity)) * ds
    return mean, sigma * math.sqrt(-ds)


def vp_step(
    x0_hat: torch.Tensor, eps_hat: torch.Tensor, alpha: float, sigma: float, alpha_next: float, sigma_next: float, eta: float
) -> tuple[torch.Tensor, float]:
    """The mean and std of one DDIM step with stochasticity eta on a variance-preserving schedule
    x_t = alpha_t x0 + sigma_t eps (alpha^2 + sigma^2 = 1: DDPM's sqrt(abar_t), sqrt(1 - abar_t);
    the cosine "v" schedule's cos, sin), from t to the next, less noisy level (Song et al. 2021,
    arXiv 2010.02502, Eq. 12 and 16):

        std  = eta * (sigma_next / sigma) * sqrt(1 - alpha^2 / alpha_next^2)
        mean = alpha_next * x0_hat + sqrt(sigma_next^2 - std^2) * eps_hat

    eta = 1 is the DDPM posterior q(x_next | x_t, x0_hat) on the sampler's grid (DDPO's sampler,
    arXiv 2305.13301); eta = 0 is DDIM. A step to sigma_next = 0 has std 0 (deterministic).
    Returns `(mean, std)`."""
    ratio = 0.0 if sigma == 0 else 1 - (alpha / alpha_next) ** 2
    std = eta * (sigma_next / sigma) * math.sqrt(max(ratio, 0.0)) if sigma > 0 else 0.0
    mean = alpha_next * x0_hat.float() + math.sqrt(max(sigma_next**2 - std**2, 0.0)) * eps_hat.float()
    return mean, std


def clean_and_noise(prediction: torch.Tensor, latents: torch.Tensor, prediction_type: str, alpha, sigma) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) from a denoiser's prediction at x_t = alpha x0 + sigma eps:

        epsilon:  x0 = (x_t - sigma eps) / alpha
        v:        x0 = alpha x_t - sigma v,   eps = sigma x_t + alpha v    (alpha^2 + sigma^2 = 1)
        flow:     x0 = x_t - s v,             eps = x_t + (1 - s) v        (alpha = 1 - s, sigma = s)

    `alpha`, `sigma`: numbers or (N,) tensors."""
    pred, x = prediction.float(), latents.float()

    def per_clip(value):
        value = torch.as_tensor(value, dtype=torch.float32, device=x.device)
        return value.reshape(-1, *[1] * (x.ndim - 1)) if value.ndim == 1 else value

    alpha, sigma = per_clip(alpha), per_clip(sigma)
    if prediction_type == "epsilon":
        return (x - sigma * pred) / alpha, pred
    if prediction_type == "v_prediction":
        return alpha * x - sigma * pred, sigma * x + alpha * pred
    if prediction_type == "flow":
        return x - sigma * pred, x + alpha * pred
    raise ValueError(f"unknown prediction type {prediction_type!r} (expected epsilon, v_prediction or flow)")


def clipped_policy_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate (Schulman et al. 2017) on one sampler step, as GRPO uses it:

        rho = exp(log p_theta(x' | x) - log p_old(x' | x))
        L   = mean_i max(-A_i rho_i, -A_i clip(rho_i, 1 - c, 1 + c))

    At rho = 1 the gradient is -mean_i A_i grad log p_theta: the policy gradient. Logs the
    fraction of clipped ratios, the mean ratio and the approximate KL 0.5 mean (log rho)^2."""
    log_ratio = log_prob.float() - old_log_prob.float().detach()
    ratio = torch.exp(log_ratio)
    advantages = advantages.float().detach()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    logs = {
        "clip_fraction": ((ratio - 1).abs() > clip_range).float().mean().item(),
        "ratio_mean": ratio.detach().mean().item(),
        "approx_kl": 0.5 * log_ratio.detach().pow(2).mean().item(),
    }
    return loss, logs


def gaussian_mean_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: float) -> torch.Tensor:
    """KL(N(mean, std^2 I) || N(ref_mean, std^2 I)) of one sampler step in closed form, averaged
    over the dimensions as log p is: mean_d (mean_d - ref_d)^2 / (2 std^2). Shape (N,)."""
    return ((mean.float() - ref_mean.float().detach()) ** 2).flatten(1).mean(dim=1) / (2 * std**2)


def awm_loss(errors: torch.Tensor, old_errors: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Advantage Weighted Matching (AWM, arXiv 2509.25050): the policy's log-likelihood of its own
    clean sample x0 replaced by minus its denoising error at freshly drawn (t, eps), l_i, and the
    PPO-clipped ratio against the old policy's error l_old_i at the same draw:

        rho_i = exp(l_old_i - l_i),   L = mean_i max(-A_i rho_i, -A_i clip(rho_i, 1 - c, 1 + c))

    At rho = 1 the gradient is mean_i A_i grad l_i: BATON's Eq. 7 with the weights w_i replaced by
    online, group-normalised advantages (negative ones push the error up), inside a trust region."""
    return clipped_policy_loss(-errors, -old_errors, advantages, clip_range)


def nft_loss(
    prediction: torch.Tensor, old_prediction: torch.Tensor, clean: torch.Tensor, to_clean, advantages: torch.Tensor, adv_max: float, beta: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """DiffusionNFT (arXiv 2509.16117): the current prediction p_theta and the old policy's p_old
    (detached) make an implicit positive and negative policy,

        p+ = b p_theta + (1 - b) p_old,      p- = (1 + b) p_old - b p_theta
        x0+ = to_clean(p+),  x0- = to_clean(p-)                  (linear in the prediction)
        r_i = clip(A_i / adv_max / 2 + 1/2, 0, 1)
        L   = adv_max * mean_i [ r_i ||x0+ - x0||^2 / w+_i + (1 - r_i) ||x0- - x0||^2 / w-_i ] / b

    with ||.||^2 the mean over dimensions and w = mean |x0_hat - x0| (detached, at least 1e-5).
    With p_old = p_theta the loss is adv_max * mean_i ||x0_hat_i - x0_i||^2 / w_i / b whatever
    the advantages. b is not a KL weight. Logs the mean squared deviation of p_theta from p_old
    (stuck at 0: the policy stopped moving away from the old one)."""
    old = old_prediction.float().detach()
    pred = prediction.float()
    clean = clean.float()
    r = (advantages.float().detach() / adv_max / 2 + 0.5).clamp(0, 1)
    positive = to_clean(beta * pred + (1 - beta) * old)
    negative = to_clean((1 + beta) * old - beta * pred)

    def normalised_error(x0_hat):
        weight = (x0_hat.detach() - clean).abs().flatten(1).mean(dim=1).clamp(min=1e-5)
        return (x0_hat - clean).pow(2).flatten(1).mean(dim=1) / weight

    loss = adv_max * (r * normalised_error(positive) + (1 - r) * normalised_error(negative)).mean() / beta
    logs = {"policy_deviation": (pred.detach() - old).pow(2).mean().item()}
    return loss, logs
