"""The online objectives' equations (`losses.py`) against independent computations: diffusers'
DDIM step, the DDPM posterior of Ho et al., torch's Normal density, the exact velocity of Gaussian
data, autograd, and Monte Carlo."""

import math

import pytest
import torch
from diffusers import DDIMScheduler

from baton_trainer.losses import (
    clean_and_noise,
    clipped_policy_loss,
    flow_sde_step,
    gaussian_log_prob,
    gaussian_mean_kl,
    group_advantages,
    nft_loss,
    vp_step,
)
from baton_trainer.tiny_parts import tiny_scheduler


def test_the_ddpm_posterior_step_is_diffusers_ddim_step_at_eta_1_and_its_log_prob_is_the_normal_density():
    scheduler = DDIMScheduler.from_config(tiny_scheduler().config)
    scheduler.set_timesteps(10)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 6, generator=gen)
    model_output = torch.randn(3, 4, 5, 6, generator=gen)
    noise = torch.randn(3, 4, 5, 6, generator=gen)
    abar, stride = scheduler.alphas_cumprod, scheduler.config.num_train_timesteps // 10
    for t in [int(t) for t in scheduler.timesteps[:-1]]:
        expected = scheduler.step(model_output, t, x, eta=1.0, variance_noise=noise).prev_sample
        a, a_next = abar[t].item(), abar[t - stride].item()
        alpha, sigma, alpha_next, sigma_next = math.sqrt(a), math.sqrt(1 - a), math.sqrt(a_next), math.sqrt(1 - a_next)
        x0, eps = clean_and_noise(model_output, x, scheduler.config.prediction_type, alpha, sigma)
        mean, std = vp_step(x0, eps, alpha, sigma, alpha_next, sigma_next, eta=1.0)
        torch.testing.assert_close(mean + std * noise, expected, rtol=1e-5, atol=1e-5)
        # Ho et al. (2020), Eq. 7 on the strided grid: the posterior q(x_next | x_t, x0)
        beta = 1 - a / a_next
        posterior_mean = math.sqrt(a_next) * beta / (1 - a) * x0 + math.sqrt(1 - beta) * (1 - a_next) / (1 - a) * x
        torch.testing.assert_close(mean, posterior_mean, rtol=1e-5, atol=1e-5)
        assert std == pytest.approx(math.sqrt((1 - a_next) / (1 - a) * beta), rel=1e-6)
        sample = mean + std * noise
        density = torch.distributions.Normal(mean, std).log_prob(sample).flatten(1).mean(dim=1)
        torch.testing.assert_close(gaussian_log_prob(sample, mean, std), density, rtol=1e-5, atol=1e-5)


def test_the_flow_sde_keeps_the_marginals_of_gaussian_data_and_its_log_prob_is_the_normal_density():
    """For x0 ~ N(0, c^2) the exact velocity is known: v(x, s) = x (s - (1 - s) c^2) / V_s with
    V_s = (1 - s)^2 c^2 + s^2. One SDE step from the exact marginal at s must land on the marginal
    at s_next up to O(ds^2): without the drift correction it misses by the step's whole noise
    variance std^2."""
    c2 = 0.3
    variance = lambda s: (1 - s) ** 2 * c2 + s**2
    for schedule, eta in [("flow_grpo", 0.7), ("dance", 0.3)]:
        for s in (0.9, 0.5, 0.2):
            ds = -1e-4
            x = torch.tensor([[-3.0, -1.0, 0.5, 2.0]]) * math.sqrt(variance(s))
            v = x * (s - (1 - s) * c2) / variance(s)
            mean, std = flow_sde_step(x, v, s, s + ds, eta, schedule)
            scale = (mean / x).mean().item()  # the mean step is linear in x: mean = scale * x
            next_variance = scale**2 * variance(s) + std**2
            assert abs(next_variance - variance(s + ds)) < 0.01 * std**2, (schedule, s)
            sample = mean + std * torch.ones_like(mean)
            density = torch.distributions.Normal(mean, std).log_prob(sample).flatten(1).mean(dim=1)
            torch.testing.assert_close(gaussian_log_prob(sample, mean, std), density, rtol=1e-5, atol=1e-5)
    # eta 0 is Euler
    x, v = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mean, std = flow_sde_step(x, v, 0.6, 0.5, 0.0)
    assert std == 0 and torch.allclose(mean, x - 0.1 * v)


def test_at_ratio_one_the_clipped_loss_gradient_is_minus_the_advantage_times_the_log_prob_gradient():
    theta = torch.randn(5, requires_grad=True)
    features = torch.randn(4, 5)
    advantages = torch.tensor([1.5, -0.5, 0.0, 2.0])
    log_p = torch.nn.functional.logsigmoid(features @ theta)
    loss, logs = clipped_policy_loss(log_p, log_p.detach(), advantages, 1e-4)
    (grad,) = torch.autograd.grad(loss, theta, retain_graph=True)
    (expected,) = torch.autograd.grad(-(advantages * log_p).mean(), theta, retain_graph=True)
    torch.testing.assert_close(grad, expected)
    assert logs["ratio_mean"] == pytest.approx(1.0) and logs["clip_fraction"] == 0 and logs["approx_kl"] == 0
    # Outside the trust region the clipped side carries no gradient
    loss, logs = clipped_policy_loss(log_p, log_p.detach() - 1.0, torch.ones(4), 0.1)
    (grad,) = torch.autograd.grad(loss, theta)
    assert logs["clip_fraction"] == 1.0 and torch.count_nonzero(grad) == 0


def test_the_closed_form_kl_matches_monte_carlo_and_is_zero_between_equal_means():
    gen = torch.Generator().manual_seed(1)
    mean, ref, std = torch.randn(2, 50, generator=gen), torch.randn(2, 50, generator=gen), 0.7
    assert torch.count_nonzero(gaussian_mean_kl(mean, mean.clone(), std)) == 0
    samples = mean + std * torch.randn(20000, 2, 50, generator=gen)
    monte_carlo = (
        (gaussian_log_prob(samples.reshape(-1, 50), mean.repeat(20000, 1), std) - gaussian_log_prob(samples.reshape(-1, 50), ref.repeat(20000, 1), std))
        .reshape(20000, 2)
        .mean(0)
    )
    torch.testing.assert_close(gaussian_mean_kl(mean, ref, std), monte_carlo, rtol=0.03, atol=0.02)


def test_a_group_with_equal_rewards_has_zero_advantages_and_counts_as_zero_spread():
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.2, 0.9, 0.5, 0.5, 0.5])
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    advantages, zero_spread = group_advantages(rewards, groups)
    assert zero_spread.tolist() == [True, True, True, False, False, True, True, True]
    assert advantages[zero_spread].abs().max() == 0
    assert advantages[3] < 0 < advantages[4] and advantages[3] == pytest.approx(-1.0, abs=1e-3)
    # global std: the batch's spread, not the group's
    advantages, _ = group_advantages(rewards, groups, std_scope="global")
    assert advantages[4] == pytest.approx(0.35 / (rewards.double().std(unbiased=False).item() + 1e-4), rel=1e-5)
    # clipping
    advantages, _ = group_advantages(torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0]), torch.zeros(5, dtype=torch.long), clip=1.5)
    assert advantages.max() == pytest.approx(1.5)


def test_nft_with_the_old_policy_equal_to_the_current_one_has_the_documented_value():
    gen = torch.Generator().manual_seed(2)
    pred = torch.randn(3, 4, 6, generator=gen, requires_grad=True)
    noisy, clean = torch.randn(3, 4, 6, generator=gen), torch.randn(3, 4, 6, generator=gen)
    s = torch.tensor([0.3, 0.6, 0.9])
    to_clean = lambda p: clean_and_noise(p, noisy, "flow", 1 - s, s)[0]
    for advantages in (torch.tensor([1.0, -2.0, 0.0]), torch.tensor([5.0, 5.0, -5.0])):
        loss, logs = nft_loss(pred, pred.detach(), clean, to_clean, advantages, adv_max=5.0, beta=0.5)
        x0 = to_clean(pred.detach())
        weight = (x0 - clean).abs().flatten(1).mean(1)
        expected = 5.0 * ((x0 - clean).pow(2).flatten(1).mean(1) / weight).mean() / 0.5
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        assert logs["policy_deviation"] == 0
    # a positive advantage pulls the prediction's clean estimate toward the sample, a negative one away
    loss, _ = nft_loss(pred, pred.detach(), clean, to_clean, torch.tensor([5.0, 5.0, 5.0]), 5.0, 1.0)
    (grad,) = torch.autograd.grad(loss, pred)
    stepped = to_clean(pred.detach() - 1e-3 * grad)
    assert (stepped - clean).pow(2).sum() < (to_clean(pred.detach()) - clean).pow(2).sum()


@pytest.mark.parametrize("on_cpu", [False, True])
def test_the_old_policy_swaps_in_exactly_and_restores_the_current_weights(on_cpu):
    from baton_trainer.objectives.online import OldPolicy

    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    module[1].requires_grad_(False)  # only trained parameters have an old policy
    old = {k: v.clone() for k, v in module.state_dict().items()}
    policy = OldPolicy(module, decay=0.5, on_cpu=on_cpu)
    assert len(policy.copy) == 2 and all(c.device.type == "cpu" for c in policy.copy)
    with torch.no_grad():
        module[0].weight.add_(1.0)
    current = {k: v.clone() for k, v in module.state_dict().items()}
    x = torch.randn(3, 4)
    with policy.swapped_in():
        assert torch.equal(module(x), torch.nn.functional.linear(torch.nn.functional.linear(x, old["0.weight"], old["0.bias"]), old["1.weight"], old["1.bias"]))
    assert all(torch.equal(v, current[k]) for k, v in module.state_dict().items())
    policy.update()  # EMA: old <- 0.5 old + 0.5 current
    torch.testing.assert_close(policy.copy[0], 0.5 * old["0.weight"] + 0.5 * current["0.weight"])
