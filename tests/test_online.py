"""Online policy optimisation (`--objective grpo|awm|nft`) on tiny models of the real classes: the
rollout sampler against diffusers' own sampler and an independent Euler loop, the first step's
ratio and KL, one trained step of each objective on a DDPM and a flow backend under LoRA and full
fine-tuning, bad rewards, and a resumed run that repeats no reward call."""

import json
import math

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from helpers import free_port, run_stage, save_audio_alpaca, save_pretrain, train

from baton_trainer.backends import load_backend
from baton_trainer.denoising import DenoisingDraw
from baton_trainer.rollouts import PolicySampler
from baton_trainer.testing import TINY_BACKENDS, save_tiny_clap
from reward_hub.rewards import Reward, RewardError, register_reward

BACKENDS = TINY_BACKENDS


class LengthReward(Reward):
    """A test reward of the real interface: the clip's RMS, NaN for captions containing `nan_word`,
    counting the clips it is asked to score."""

    name = "rms"
    sample_rate = 16000
    calls: list[int] = []

    def __init__(self, nan_word: str | None = None, device=None):
        self.nan_word = nan_word

    def _score(self, captions, waves):
        LengthReward.calls.append(len(captions))
        return [float("nan") if self.nan_word and self.nan_word in c else float(np.sqrt(np.mean(w**2))) for c, w in zip(captions, waves)]


register_reward("rms", LengthReward)


class CallCountReward(Reward):
    """A test reward that rises (sign 1) with every call, whatever the clips, or (sign -1) rises to
    its `peak`-th call and falls after: a judge falling while the training reward rises, on demand."""

    name = "call_count"
    sample_rate = 16000

    def __init__(self, sign: float = 1.0, peak: int = 0, device=None):
        self.sign, self.peak, self.calls = sign, peak, 0

    def _score(self, captions, waves):
        self.calls += 1
        return [self.calls if self.sign > 0 else -abs(self.calls - self.peak)] * len(captions)

    def options(self) -> dict:
        return {"sign": self.sign, "peak": self.peak}


register_reward("call_count", CallCountReward)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("online")
    save_audio_alpaca(root / "alpaca")
    save_pretrain(root / "pretrain", n=4)
    save_tiny_clap(root / "clap")
    for name, save in BACKENDS.items():
        save(root / name)
    return root


def config(world, backend, out, **overrides):
    from baton_trainer.stages.finetune import FinetuneConfig

    values = dict(
        run_dir=str(world / "run"),
        model=str(world / backend),
        pairwise_dataset=str(world / "alpaca"),
        feedback_dataset="none",
        reward_dataset="none",
        pretrain_dataset=str(world / "pretrain"),
        output_dir=str(out),
        cache_dir=str(out / "cache"),
        max_train_steps=2,
        learning_rate=1e-2,
        report_to="none",
        use_lora=True,
        lora_rank=4,
        duration_s=0.32,
        seed=3,
        rewards=[{"name": "clap", "model": str(world / "clap")}],
        group_size=3,
        rollout_captions=2,
        rollout_steps=4,
    )
    values.update(overrides)
    return FinetuneConfig(**values)


def sampler_for(backend, **kwargs):
    draw = DenoisingDraw(
        backend,
        Accelerator(cpu=True),
        seed=0,
        accumulation=1,
        cfg_dropout=0.0,
        snr_mode="none",
        snr_gamma=5.0,
        weight_dtype=torch.float32,
        input_dtype=torch.float32,
        duration_s=0.32,
    )
    return PolicySampler(backend, draw, duration_s=0.32, **kwargs)


def test_a_deterministic_ddpm_rollout_is_the_pipelines_ddim_sample_and_a_stochastic_one_records_each_steps_log_prob(world):
    backend = load_backend(str(world / "tango")).eval()
    captions, seeds = ["beep then hum", "a hiss"], [11, 12]
    rollout = sampler_for(backend, num_steps=5, guidance_scale=1.0, eta=0.0).sample(backend.denoiser, captions, seeds, [1, 2])
    expected = backend.generate_latents(captions, seeds, 5, 1.0, duration_s=0.32, sampler="ddim")
    torch.testing.assert_close(rollout.clean, expected, rtol=1e-4, atol=1e-5)
    assert torch.count_nonzero(rollout.log_probs) == 0  # deterministic steps have none
    sampler = sampler_for(backend, num_steps=5, guidance_scale=2.5, eta=1.0)
    rollout = sampler.sample(backend.denoiser, captions, seeds, [1, 2])
    steps = sampler.stochastic_steps()
    assert steps == [0, 1, 2, 3]  # the last step lands on the clean level: std 0
    log_p, _, _ = sampler.steps_log_prob(backend.denoiser, rollout, steps)
    torch.testing.assert_close(log_p, rollout.log_probs[:, steps].T)  # the trained policy is the sampling policy


def test_a_flow_rollout_with_eta_going_to_zero_is_the_euler_ode_sample(world):
    backend = load_backend(str(world / "stable_audio_3")).eval()
    captions, seeds = ["beep then hum", "a hiss"], [5, 6]
    sampler = sampler_for(backend, num_steps=6, guidance_scale=1.0, eta=0.0)
    text = backend.encode_text(captions, 0.32)
    x = torch.stack([torch.randn(sampler.latent_shape(), generator=torch.Generator().manual_seed(s)) for s in seeds])
    levels = np.linspace(1.0, 0.0, 7)
    with torch.no_grad():
        for s, s_next in zip(levels[:-1], levels[1:]):  # Euler on the velocity, written out
            v = backend.predict(backend.denoiser, x, torch.full((2,), float(s)), text)
            x = x + (s_next - s) * v
    ode = sampler.sample(backend.denoiser, captions, seeds, [1, 2]).clean
    torch.testing.assert_close(ode, x, rtol=1e-4, atol=1e-5)
    near = sampler_for(backend, num_steps=6, guidance_scale=1.0, eta=1e-4).sample(backend.denoiser, captions, seeds, [1, 2]).clean
    assert (
        (near - x).abs().max()
        < 1e-2
        < (sampler_for(backend, num_steps=6, guidance_scale=1.0, eta=0.7).sample(backend.denoiser, captions, seeds, [1, 2]).clean - x).abs().max()
    )


def test_a_deterministic_longcat_rollout_is_the_pipelines_own_guided_sample(world):
    """LongCat-AudioDiT runs its flow from noise to the clip and predicts the negated velocity: the
    sampler's deterministic rollout through `predict` is what its pipeline makes of the same batch
    (captions of two lengths: both pad the shorter one, and its DiT's text convolutions see that),
    guidance included."""
    backend = load_backend(str(world / "longcat_audio_dit")).eval()
    captions, seeds = ["beep then hum", "a hiss"], [5, 6]
    ode = sampler_for(backend, num_steps=6, guidance_scale=2.0, eta=0.0).sample(backend.denoiser, captions, seeds, [1, 2]).clean
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    pipe = backend.pipe(captions, audio_duration_s=0.32, num_inference_steps=6, guidance_scale=2.0, generator=generators, output_type="latent").audios
    torch.testing.assert_close(ode, pipe, rtol=1e-4, atol=1e-5)


def test_a_deterministic_ace_step_rollout_is_the_pipelines_own_sample_on_its_shifted_grid(world):
    """ACE-Step's pipeline shifts its Euler grid itself (shift 3; its scheduler has shift 1): the
    sampler's deterministic rollout through `predict` is the pipeline's sample of each caption,
    captions of two conditioning lengths in one batch (`predict` never pads one to the other)."""
    backend = load_backend(str(world / "ace_step")).eval()
    captions, seeds = ["beep then hum", "a hiss"], [5, 6]
    lengths = backend.encode_text(captions, 0.32).tensors["encoder_attention_mask"].sum(dim=1)
    assert lengths[0] != lengths[1]
    ode = sampler_for(backend, num_steps=6, guidance_scale=1.0, eta=0.0).sample(backend.denoiser, captions, seeds, [1, 2]).clean
    for row, (caption, seed) in enumerate(zip(captions, seeds)):
        alone = backend.pipe(
            [caption],
            lyrics=[""],
            audio_duration=0.32,
            num_inference_steps=6,
            guidance_scale=1.0,
            generator=[torch.Generator().manual_seed(seed)],
            output_type="latent",
        ).audios
        torch.testing.assert_close(ode[row : row + 1], alone, rtol=1e-4, atol=1e-5)


# Every backend, under LoRA (the reference: the disabled adapter) or full fine-tuning (a frozen copy):
# each objective meets every schedule (DDPM epsilon and v, cosine v, both flows) and both modes.
@pytest.mark.parametrize("backend, use_lora", [(name, i % 2 == 0) for i, name in enumerate(BACKENDS)])
@pytest.mark.parametrize("objective", ["grpo", "awm", "nft"])
def test_each_online_objective_trains_on_every_backend(world, tmp_path, backend, objective, use_lora):
    from baton_trainer.trainer import DiffusionTrainer

    extra = {"kl_beta": 0.05} if objective == "grpo" else {"rollout_reuse": 2}  # awm/nft: the second step uses the old policy
    trainer = DiffusionTrainer(config(world, backend, tmp_path / "out", objective=objective, use_lora=use_lora, **extra))
    before = [p.detach().clone() for p in trainer.trainable_params]
    out = train(trainer)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == 2 and math.isfinite(summary["final_loss"])
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, trainer.trainable_params))
    logs = trainer.last_logs
    for key in ("reward_mean", "reward_std", "zero_spread_fraction", "reward_clap", "loss_policy"):
        assert key in logs and math.isfinite(logs[key])
    stored = sorted(p.name for p in (out / "rollouts").iterdir())
    rollouts = 2 if objective == "grpo" else 1
    assert len(stored) == 2 * rollouts and all(name.startswith("rollout-") for name in stored)
    record = torch.load(out / "rollouts" / "rollout-000000-rank0.pt", weights_only=True)
    assert record["latents"].shape[:2] == (6, 5) and len(record["captions"]) == 6
    assert len(set(record["captions"][:3])) == 1 and len(set(record["captions"][3:])) == 1  # a group is one caption
    assert (out / "rollout_rewards.png").stat().st_size > 0


def test_grpo_starts_at_ratio_one_with_zero_kl_to_the_disabled_adapter(world, tmp_path):
    from baton_trainer.stages.finetune import load_training_data
    from baton_trainer.trainer import DiffusionTrainer

    trainer = DiffusionTrainer(config(world, "tango", tmp_path / "out", objective="grpo", kl_beta=0.1, learning_rate=0.5))
    feedback, pretrain = load_training_data(trainer.config, trainer.objective, trainer.latent_cache)
    _, logs = trainer.training_loss(feedback, pretrain, 0, 0)
    assert logs["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and logs["kl_reference"] == 0 and logs["clip_fraction"] == 0
    train_out = trainer.train(feedback, pretrain)
    assert train_out.is_dir() and trainer.last_logs["kl_reference"] > 0  # the adapter moved away from the base


def test_a_nan_reward_names_the_clip_and_stops_or_is_left_out_of_its_group(world, tmp_path):
    from baton_trainer.trainer import DiffusionTrainer

    rewards = [{"name": "rms", "nan_word": "rain"}]  # one of the three captions: every rollout of 3 captions has it
    with pytest.raises(RewardError, match=r"reward 'rms'.*clip.*NaN"):
        train(DiffusionTrainer(config(world, "tango", tmp_path / "stop", objective="grpo", rewards=rewards, rollout_captions=3)))
    assert list((tmp_path / "stop" / "rollouts").glob("rollout-000000-rank0.pt"))  # the clips sampled before the stop are kept
    trainer = DiffusionTrainer(config(world, "tango", tmp_path / "skip", objective="grpo", rewards=rewards, on_bad_reward="skip", rollout_captions=3))
    train(trainer)
    parts = json.loads((tmp_path / "skip" / "rollouts" / "rollout-000000-rank0.rewards.json").read_text())["rms"]
    assert None in parts and any(v is not None for v in parts)
    assert trainer.last_logs["bad_reward_clips"] > 0


def test_a_killed_run_resumes_at_its_step_repeats_no_reward_call_and_reaches_the_uninterrupted_weights(world, tmp_path):
    from baton_trainer.trainer import DiffusionTrainer

    settings = dict(objective="grpo", rewards=[{"name": "rms"}], checkpointing_steps=2, max_train_steps=4)
    LengthReward.calls.clear()
    whole = DiffusionTrainer(config(world, "tango", tmp_path / "whole", **settings))
    train(whole)
    assert len(LengthReward.calls) == 4  # one reward call per rollout
    # A run killed during step 3 (index 2): its checkpoint at 2, rollout 2 sampled and scored, rollout 3 never reached.
    LengthReward.calls.clear()
    killed = DiffusionTrainer(config(world, "tango", tmp_path / "killed", **{**settings, "max_train_steps": 3}))
    train(killed)
    for late in (tmp_path / "killed" / "checkpoints").glob("checkpoint-3"):
        import shutil

        shutil.rmtree(late)
    assert len(LengthReward.calls) == 3
    LengthReward.calls.clear()
    resumed = DiffusionTrainer(config(world, "tango", tmp_path / "killed", **settings, resume_from_checkpoint="latest"))
    train(resumed)
    assert len(LengthReward.calls) == 1  # rollout 3 only: rollout 2's rewards were read from the run folder
    for a, b in zip(whole.trainable_params, resumed.trainable_params):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_a_judged_run_with_an_ema_old_policy_resumed_mid_rollout_judges_keeps_and_exports_as_an_uninterrupted_one(world, tmp_path):
    """The old policy (an EMA, reused over two steps), the judge's history and the best judged
    weights live in the checkpoint: a run killed after step 3 (inside rollout 1) and resumed from
    checkpoint 3 takes the same steps, judges the same and exports the same weights."""
    from safetensors.torch import load_file

    from baton_trainer.trainer import DiffusionTrainer

    settings = dict(
        objective="nft",
        rewards=[{"name": "rms"}],
        old_policy_decay=0.5,
        rollout_reuse=2,
        judge_every=1,
        judge_captions=2,
        eval_rewards=[{"name": "clap", "model": str(world / "clap")}],
        stop_margin_se=1e9,  # never stop: every step is judged
        checkpointing_steps=3,
        max_train_steps=5,
    )
    whole = train(DiffusionTrainer(config(world, "tango", tmp_path / "whole", **settings)))
    train(DiffusionTrainer(config(world, "tango", tmp_path / "killed", **{**settings, "max_train_steps": 4})))
    for late in (tmp_path / "killed" / "checkpoints").glob("checkpoint-4"):
        import shutil

        shutil.rmtree(late)
    resumed = train(DiffusionTrainer(config(world, "tango", tmp_path / "killed", **settings, resume_from_checkpoint="latest")))
    history = [json.loads((out / "judge_history.json").read_text()) for out in (whole, resumed)]
    assert [h["step"] for h in history[1]] == [0, 1, 2, 3, 4, 5]
    assert all("diversity_mel" in h for h in history[1])
    for a, b in zip(*history):
        assert a["step"] == b["step"] and math.isclose(a["judge"], b["judge"], rel_tol=1e-4) and math.isclose(a["reward"], b["reward"], rel_tol=1e-4)
    exported = [load_file(out / "pytorch_lora_weights.safetensors") for out in (whole, resumed)]
    for key in exported[0]:
        torch.testing.assert_close(exported[1][key], exported[0][key], rtol=0, atol=1e-6)


def test_the_diversity_floor_keeps_the_best_judged_step_that_has_not_collapsed(world, tmp_path, capsys):
    """judge_min_diversity 1: only steps whose judge clips are at least as diverse as the untrained
    model's can be exported; with a judge that rises at every call, the export is the last step the
    floor allows (the untrained model's step 0 at worst)."""
    from baton_trainer.trainer import DiffusionTrainer

    settings = dict(objective="awm", rewards=[{"name": "rms"}], judge_every=1, judge_captions=2, stop_margin_se=1e9, max_train_steps=3)
    out = train(DiffusionTrainer(config(world, "tango", tmp_path / "floor", eval_rewards=[{"name": "call_count"}], judge_min_diversity=1.0, **settings)))
    history = json.loads((out / "judge_history.json").read_text())
    allowed = [h["step"] for h in history if h["diversity_mel"] >= history[0]["diversity_mel"]]
    assert allowed[0] == 0 and history[-1]["judge"] > history[0]["judge"]
    printed = capsys.readouterr().out
    if allowed[-1] != history[-1]["step"]:
        assert f"kept the weights of step {allowed[-1]}, the best by the judge" in printed
    else:
        assert "the best by the judge" not in printed
    with pytest.raises(ValueError, match="judge_min_diversity"):
        config(world, "tango", tmp_path / "bad", eval_rewards=[{"name": "call_count"}], judge_min_diversity=0.5, **{**settings, "judge_clips_per_caption": 1})


def launch(ranks: int, *args):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc_per_node", str(ranks), "--master_port", str(free_port()), "-m", "baton_trainer", "finetune", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("objective,extra", [("grpo", {}), ("nft", {"old_policy_decay": 0.5, "rollout_reuse": 2, "max_train_steps": 3})])
def test_two_processes_take_whole_groups_and_reach_the_one_process_weights(world, tmp_path, objective, extra):
    """nft with an EMA old policy reused over two steps: the old policy's swap runs on each process."""
    from safetensors.torch import load_file

    def args(out, pretrain_batch):
        c = config(world, "tango", out, objective=objective, rollout_captions=2, **extra)
        keys = ("run_dir", "model", "pairwise_dataset", "feedback_dataset", "reward_dataset", "pretrain_dataset", "output_dir", "cache_dir", "max_train_steps")
        keys += ("learning_rate", "report_to", "lora_rank", "duration_s", "seed", "objective", "group_size", "rollout_captions", "rollout_steps")
        keys += ("old_policy_decay", "rollout_reuse")
        flat = [part for key in keys for part in (f"--{key}", str(getattr(c, key)))]
        return [*flat, "--use_lora", "true", "--rewards", json.dumps(c.rewards), "--pretrain_batch_size", str(pretrain_batch)]

    refused = launch(2, *args(tmp_path / "odd", 2)[:-2], "--pretrain_batch_size", "2", "--rollout_captions", "3")
    assert refused.returncode != 0 and "rollout_captions 3 does not divide over 2 processes" in refused.stderr and "e.g. 4" in refused.stderr
    run_stage("finetune", *args(tmp_path / "one", 4))
    result = launch(2, *args(tmp_path / "two", 2), "--checkpointing_steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):  # each process keeps its own objective state in the checkpoint
        assert (tmp_path / "two" / "checkpoints" / "checkpoint-2" / f"online_state-rank{rank}.safetensors").is_file()
    one = torch.load(tmp_path / "one" / "rollouts" / "rollout-000001-rank0.pt", weights_only=True)
    halves = [torch.load(tmp_path / "two" / "rollouts" / f"rollout-000001-rank{r}.pt", weights_only=True) for r in (0, 1)]
    for half in halves:
        assert len(set(half["captions"])) == 1 and len(half["captions"]) == 3  # one whole group per process
    assert halves[0]["captions"] + halves[1]["captions"] == one["captions"]
    torch.testing.assert_close(torch.cat([h["latents"] for h in halves]), one["latents"], rtol=1e-4, atol=1e-5)
    weights_one, weights_two = (load_file(tmp_path / name / "pytorch_lora_weights.safetensors") for name in ("one", "two"))
    for key in weights_one:
        torch.testing.assert_close(weights_two[key], weights_one[key], rtol=1e-4, atol=1e-5)


def test_the_judge_stops_a_hacked_run_and_the_best_judged_weights_are_exported(world, tmp_path, capsys):
    from safetensors.torch import load_file

    from baton_trainer.trainer import DiffusionTrainer

    settings = dict(objective="awm", rewards=[{"name": "call_count"}], judge_every=1, judge_captions=2, stop_margin_se=0.0, max_train_steps=5)
    # the judge's second call (step 1; step 0 is the untrained model) is its best, the third falls
    trainer = DiffusionTrainer(config(world, "tango", tmp_path / "hacked", eval_rewards=[{"name": "call_count", "sign": -1.0, "peak": 2}], **settings))
    out = train(trainer)
    history = json.loads((out / "judge_history.json").read_text())
    assert [h["step"] for h in history] == [0, 1, 2] and history[2]["judge"] < history[1]["judge"] and history[2]["reward"] > history[1]["reward"]
    assert json.loads((out / "train_summary.json").read_text())["global_step"] == 2  # stopped at the first fall
    assert "keeping the weights of step 1" in capsys.readouterr().out
    assert (out / "judge_history.png").is_file()
    one_step = train(DiffusionTrainer(config(world, "tango", tmp_path / "one", **{**settings, "judge_every": 0, "max_train_steps": 1})))
    best, exported = load_file(one_step / "pytorch_lora_weights.safetensors"), load_file(out / "pytorch_lora_weights.safetensors")
    for key in best:
        torch.testing.assert_close(exported[key], best[key], rtol=0, atol=0)
    # a judge that also trains is named
    DiffusionTrainer(config(world, "tango", tmp_path / "same", eval_rewards=[{"name": "call_count"}], **settings))
    assert "judge(s) the policy and also train it" in capsys.readouterr().out
