import pytest
import torch

from baton_trainer.losses import baton_loss, denoising_target, snr_weights
from baton_trainer.testing import tiny_scheduler


def plain_reference(scheduler, z0, noise, t, pred, weights, mode, gamma, pred_pt=None, z0_pt=None, noise_pt=None, t_pt=None, beta=0.5):
    """Eq. 7 written out from DESIGN section 1 with loops, independent of the library code."""
    abar = scheduler.alphas_cumprod

    def one(z, e, ti, p):
        a = abar[ti].item()
        target = e if scheduler.config.prediction_type == "epsilon" else (a**0.5) * e - ((1 - a) ** 0.5) * z
        s = a / (1 - a)
        if mode == "none":
            w = 1.0
        elif mode == "tango" or scheduler.config.prediction_type == "epsilon":
            w = min(s, gamma) / s
        else:
            w = min(s, gamma) / (s + 1)
        return w * ((p - target) ** 2).mean().item()

    fb = sum(weights[i].item() * one(z0[i], noise[i], t[i], pred[i]) for i in range(len(z0))) / len(z0)
    if pred_pt is None:
        return fb
    pt = sum(one(z0_pt[j], noise_pt[j], t_pt[j], pred_pt[j]) for j in range(len(z0_pt))) / len(z0_pt)
    return fb + beta * pt


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("mode", ["none", "min_snr", "tango"])
def test_baton_loss_matches_plain_reimplementation(prediction_type, mode):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(tiny_scheduler().config, prediction_type=prediction_type)
    g = torch.Generator().manual_seed(0)
    z0, noise, pred = (torch.randn(5, 4, 6, 3, generator=g) for _ in range(3))
    z0p, noisep, predp = (torch.randn(3, 4, 6, 3, generator=g) for _ in range(3))
    t = torch.randint(0, 1000, (5,), generator=g)
    tp = torch.randint(0, 1000, (3,), generator=g)
    weights = torch.rand(5, generator=g)
    loss, logs = baton_loss(
        pred,
        denoising_target(scheduler, z0, noise, t),
        weights,
        predp,
        denoising_target(scheduler, z0p, noisep, tp),
        beta=0.7,
        snr_fb=snr_weights(scheduler, t, 5.0, mode),
        snr_pt=snr_weights(scheduler, tp, 5.0, mode),
    )
    expected = plain_reference(scheduler, z0, noise, t, pred, weights, mode, 5.0, predp, z0p, noisep, tp, beta=0.7)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)


def test_min_snr_differs_from_tango_form_for_v_prediction():
    scheduler = tiny_scheduler()
    t = torch.tensor([10, 500, 990])
    ratio = scheduler.alphas_cumprod[t] / (1 - scheduler.alphas_cumprod[t])
    assert torch.allclose(snr_weights(scheduler, t, 5.0, "min_snr"), torch.clamp(ratio, max=5) / (ratio + 1))
    assert torch.allclose(snr_weights(scheduler, t, 5.0, "tango"), torch.clamp(ratio, max=5) / ratio)
    with pytest.raises(ValueError, match="unknown snr"):
        snr_weights(scheduler, t, 5.0, "bogus")


def test_beta_zero_all_ones_weights_is_plain_loss():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    loss, _ = baton_loss(pred, target, torch.ones(4), torch.randn(2, 8), torch.randn(2, 8), beta=0.0)
    assert loss.item() == pytest.approx(torch.nn.functional.mse_loss(pred, target).item(), rel=1e-6)


def test_zero_weight_sample_contributes_zero_gradient():
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(3, 2, 4, 4, generator=g, requires_grad=True)
    target = torch.randn(3, 2, 4, 4, generator=g)
    loss, _ = baton_loss(pred, target, torch.tensor([1.0, 0.0, 0.3]))
    loss.backward()
    assert torch.count_nonzero(pred.grad[1]) == 0
    assert torch.count_nonzero(pred.grad[0]) > 0 and torch.count_nonzero(pred.grad[2]) > 0


def test_weights_shape_checked():
    with pytest.raises(ValueError, match="weights must have shape"):
        baton_loss(torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(2))


def test_the_flow_objective_is_what_diffusers_flow_matching_sampler_integrates():
    """Rectified flow: x_t = (1 - t) z0 + t eps is diffusers' `scale_noise`, and the sampler's Euler
    steps, handed the true velocity eps - z0, carry x_t to z0 (no flow backend yet: the objective
    stands alone)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from baton_trainer.losses import noised_latents_and_target

    z0 = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(1))
    for i in (0, 3, 6):
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        scheduler.set_timesteps(8)
        sigma = scheduler.sigmas[i]
        noisy, target = noised_latents_and_target("flow", z0, noise, torch.full((2,), float(sigma)))
        torch.testing.assert_close(noisy, scheduler.scale_noise(z0, scheduler.timesteps[i][None], noise), rtol=1e-5, atol=1e-5)
        sample = noisy
        for timestep in scheduler.timesteps[i:]:
            sample = scheduler.step(target, timestep, sample).prev_sample
        torch.testing.assert_close(sample, z0, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="unknown training objective"):
        noised_latents_and_target("x0", z0, noise, torch.zeros(2))
