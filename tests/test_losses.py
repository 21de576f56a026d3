import pytest
import torch

from baton_trainer.losses import baton_loss, denoising_target, snr_weights
from baton_trainer.tiny_parts import tiny_scheduler


def plain_reference(scheduler, z0, noise, t, pred, weights, mode, gamma, pred_pt=None, z0_pt=None, noise_pt=None, t_pt=None, beta=0.5):
    """Eq. 7 written out from the paper (docs/method.md) with loops, independent of the library code."""
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
        pretrain_weight=0.7,
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
    loss, _ = baton_loss(pred, target, torch.ones(4), torch.randn(2, 8), torch.randn(2, 8), pretrain_weight=0.0)
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


# -- DPO and KTO ---------------------------------------------------------------------------------


def test_dpo_loss_is_the_papers_equation_on_hand_made_losses():
    import math

    from baton_trainer.losses import dpo_loss

    model_w, model_l, ref_w, ref_l = [0.10, 0.30], [0.20, 0.10], [0.15, 0.20], [0.12, 0.25]
    beta = 40.0
    expected = 0.0
    for mw, ml, rw, rl in zip(model_w, model_l, ref_w, ref_l):
        inside = -0.5 * beta * ((mw - ml) - (rw - rl))
        expected += math.log1p(math.exp(-inside)) / 2  # -log sigmoid(inside), averaged over the two pairs
    loss, logs = dpo_loss(*(torch.tensor(v) for v in (model_w, model_l, ref_w, ref_l)), dpo_beta=beta)
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    assert logs["dpo_accuracy"] == 0.5  # the first pair moved towards w, the second away


def test_dpo_lowering_the_preferred_clips_error_lowers_the_loss():
    from baton_trainer.losses import dpo_loss

    ref = torch.tensor([0.2, 0.2])
    base, _ = dpo_loss(torch.tensor([0.2, 0.2]), torch.tensor([0.2, 0.2]), ref, ref, dpo_beta=100.0)
    better, _ = dpo_loss(torch.tensor([0.19, 0.2]), torch.tensor([0.2, 0.2]), ref, ref, dpo_beta=100.0)
    worse, _ = dpo_loss(torch.tensor([0.2, 0.2]), torch.tensor([0.19, 0.2]), ref, ref, dpo_beta=100.0)
    assert better < base < worse


def test_dpo_and_kto_gradients_at_initialisation_take_the_documented_form():
    """With the reference equal to the model (inside = 0, r = z_ref = 0): dL_DPO/dl_theta(w) =
    +beta / 4 / pairs, dL_DPO/dl_theta(l) = -beta / 4 / pairs; dL_KTO/dl_theta(x) = +lambda beta / 4 / clips
    for a desirable clip and -lambda beta / 4 / clips for an undesirable one."""
    from baton_trainer.losses import dpo_loss, kto_loss

    losses = torch.tensor([0.3, 0.1, 0.2])
    model_w, model_l = losses.clone().requires_grad_(), (losses + 0.05).requires_grad_()
    loss, _ = dpo_loss(model_w, model_l, losses.clone(), losses + 0.05, dpo_beta=200.0)
    loss.backward()
    torch.testing.assert_close(model_w.grad, torch.full((3,), 200.0 / 4 / 3))
    torch.testing.assert_close(model_l.grad, torch.full((3,), -200.0 / 4 / 3))

    model = losses.clone().requires_grad_()
    desirable = torch.tensor([True, False, True])
    loss, logs = kto_loss(model, losses.clone(), desirable, kto_beta=300.0, lambda_desirable=1.0, lambda_undesirable=2.0)
    assert abs(loss.item() - (0.5 * 1 + 0.5 * 2 + 0.5 * 1) / 3) < 1e-6 and logs["kto_reference_point"] == 0.0
    loss.backward()
    torch.testing.assert_close(model.grad, torch.tensor([300.0 / 4 / 3, -2 * 300.0 / 4 / 3, 300.0 / 4 / 3]))


def test_kto_loss_is_the_authors_equation_with_its_reference_point():
    import math

    from baton_trainer.losses import kto_loss

    model, ref, desirable = [0.10, 0.30, 0.25, 0.05], [0.20, 0.20, 0.20, 0.20], [1, 1, 0, 0]
    beta = 20.0
    rewards = [r - m for m, r in zip(model, ref)]
    z = max(0.0, sum(rewards) / 4)
    expected = sum(1 - 1 / (1 + math.exp(-(1 if d else -1) * beta * (r - z))) for r, d in zip(rewards, desirable)) / 4
    loss, logs = kto_loss(torch.tensor(model), torch.tensor(ref), torch.tensor(desirable).bool(), kto_beta=beta)
    assert math.isclose(loss.item(), expected, rel_tol=1e-6) and math.isclose(logs["kto_reference_point"], z, rel_tol=1e-6)
    given, _ = kto_loss(torch.tensor(model), torch.tensor(ref), torch.tensor(desirable).bool(), kto_beta=beta, reference_point=0.0)
    assert not math.isclose(given.item(), expected)  # the reference point matters, and a given one is used
