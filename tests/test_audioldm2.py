"""AudioLDM 2 through every stage: a tiny pipeline of the real diffusers and transformers classes,
saved in the published checkpoints' layout, loaded by `--model`, trained (LoRA and full), exported,
reloaded the diffusers way, generated from, evaluated and shown in the Space."""

import json

import numpy as np
import pytest
import torch
from helpers import save_preference, save_pretrain

from baton_trainer.backends import load_backend
from baton_trainer.backends.audioldm2 import AudioLDM2Model
from baton_trainer.losses import baton_loss, denoising_target
from baton_trainer.testing import save_tiny_audioldm2

PROMPTS = ["a dog barks then beep", "rain falls with hum"]
SEEDS = [3, 4]


def finetune_config(root, mode, **overrides):
    from baton_trainer.stages.finetune import FinetuneConfig

    values = dict(
        run_dir=str(root / "run"), model=str(root / "base"), feedback_dataset=str(root / "feedback"), pretrain_dataset=str(root / "pretrain"),
        output_dir=str(root / mode), cache_dir=str(root / "cache"), train_batch_size=4, learning_rate=5e-2, max_train_steps=3,
        report_to="none", use_lora=mode == "lora", lora_rank=4, seed=1, snr_mode="min_snr",
    )
    values.update(overrides)
    return FinetuneConfig(**values)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny AudioLDM 2 base and, trained from it, a LoRA export and a full export."""
    from baton_trainer.trainer import RewardWeightedDiffusionTrainer

    root = tmp_path_factory.mktemp("audioldm2")
    save_tiny_audioldm2(root / "base")
    save_preference(root / "feedback", n=8)
    save_pretrain(root / "pretrain", n=8)
    for mode in ("lora", "full"):
        RewardWeightedDiffusionTrainer(finetune_config(root, mode)).train()
    return root


def latents_of(pipe, **kwargs):
    """Latents from diffusers' own AudioLDM2Pipeline call, one caption at a time (its batch-1 behaviour)."""
    return torch.cat([
        pipe(p, num_inference_steps=3, guidance_scale=2.0, audio_length_in_s=0.32, generator=[torch.Generator().manual_seed(s)], output_type="latent", **kwargs).audios
        for p, s in zip(PROMPTS, SEEDS)
    ])


def plain_pipeline(folder, **components):
    """What a diffusers user loads (the published layout names GPT2Model; the pipeline needs the LM head class)."""
    from diffusers import AudioLDM2Pipeline
    from transformers import GPT2LMHeadModel

    return AudioLDM2Pipeline.from_pretrained(folder, language_model=GPT2LMHeadModel.from_pretrained(folder / "language_model"), **components)


def test_model_flag_picks_the_backend_from_model_index_and_generation_is_per_seed(trained):
    model = load_backend(trained / "base")
    assert isinstance(model, AudioLDM2Model) and model.mel_config.framing == "half_hop" and model.duration_s == pytest.approx(0.32)
    both = model.generate(PROMPTS, SEEDS, num_inference_steps=3, guidance_scale=3.0)
    assert both.shape == (2, int(0.32 * 16000)) and both.dtype == np.float32
    alone = model.generate(PROMPTS[1:], SEEDS[1:], num_inference_steps=3, guidance_scale=3.0)
    scale = np.abs(both).max()
    np.testing.assert_allclose(both[1], alone[0], rtol=0, atol=1e-4 * scale)  # a clip does not depend on its batch
    again = model.generate(PROMPTS, SEEDS, num_inference_steps=3, guidance_scale=3.0)
    other = model.generate(PROMPTS, [SEEDS[0] + 1, SEEDS[1]], num_inference_steps=3, guidance_scale=3.0)
    assert np.array_equal(again, both) and np.abs(other[0] - both[0]).max() > 1e-2 * scale
    # Each clip is what diffusers' own pipeline makes from its caption and seed.
    pipe = plain_pipeline(trained / "base")
    for i in range(2):
        ref = pipe(PROMPTS[i], num_inference_steps=3, guidance_scale=3.0, audio_length_in_s=0.32, generator=[torch.Generator().manual_seed(SEEDS[i])]).audios[0]
        np.testing.assert_allclose(both[i], ref, rtol=0, atol=1e-4 * scale)
    with pytest.raises(ValueError, match="finite"):
        model.generate(PROMPTS[:1], [0], num_inference_steps=1, guidance_scale=float("nan"))


def test_training_conditioning_is_the_pipelines_and_the_target_is_what_the_sampler_inverts(trained):
    model = load_backend(trained / "base")
    cond = model.encode_text(PROMPTS)
    embeds, mask, generated = model.pipe.encode_prompt(PROMPTS[:1], "cpu", 1, False)
    length = int(mask.sum())
    torch.testing.assert_close(cond.tensors["encoder_hidden_states"][:1], generated)
    torch.testing.assert_close(cond.tensors["encoder_hidden_states_1"][:1, :length], embeds)
    assert model.noise_scheduler.config.prediction_type == "epsilon"
    scheduler = model.pipe.scheduler  # AudioLDM 2's DDIM sampler
    scheduler.set_timesteps(10)
    x0 = torch.randn(2, 4, 16, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    for t in scheduler.timesteps[::3]:
        timesteps = torch.full((2,), int(t))
        noisy = model.noise_scheduler.add_noise(x0, noise, timesteps)
        target = denoising_target(model.noise_scheduler, x0, noise, timesteps)
        torch.testing.assert_close(scheduler.step(target, int(t), noisy).pred_original_sample, x0, rtol=1e-4, atol=1e-4)
        assert baton_loss(target, target, torch.ones(2))[0].item() == 0.0


def test_a_step_on_a_fixed_batch_lowers_the_loss(trained, tmp_path):
    from baton_trainer.trainer import RewardWeightedDiffusionTrainer

    trainer = RewardWeightedDiffusionTrainer(finetune_config(trained, "step", output_dir=str(tmp_path / "out"), learning_rate=1e-2))
    feedback, pretrain = trainer.load_data()
    assert set(feedback.text.tensors) == {"encoder_hidden_states", "encoder_hidden_states_1", "encoder_attention_mask_1"}
    losses = []
    for _ in range(6):
        loss, _ = trainer.training_loss(feedback, pretrain, step=0, micro=0)  # the same batch, noise and timesteps
        losses.append(loss.item())
        trainer.accelerator.backward(loss)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
    assert losses[-1] < losses[0]


def test_exports_reload_in_plain_diffusers_and_reproduce_the_trainers_model(trained):
    from diffusers import AudioLDM2UNet2DConditionModel
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    assert (trained / "lora" / "pytorch_lora_weights.safetensors").is_file()
    ours_lora = latents_of(AudioLDM2Model.from_pretrained(trained / "base", export=trained / "lora").pipe)
    # docs/backends.md: a LoRA export on a plain AudioLDM2Pipeline with peft.
    pipe = plain_pipeline(trained / "base")
    state, _, metadata = StableDiffusionLoraLoaderMixin.lora_state_dict(str(trained / "lora"), return_lora_metadata=True)
    inject_adapter_in_model(LoraConfig(r=metadata["unet.r"], lora_alpha=metadata["unet.lora_alpha"], target_modules=metadata["unet.target_modules"]), pipe.unet)
    set_peft_model_state_dict(pipe.unet, convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in state.items()}))
    torch.testing.assert_close(latents_of(pipe), ours_lora, rtol=1e-4, atol=1e-5)
    assert (latents_of(plain_pipeline(trained / "base")) - ours_lora).abs().max() > 1e-3  # the adapter does something

    ours_full = latents_of(AudioLDM2Model.from_pretrained(trained / "base", export=trained / "full").pipe)
    unet = AudioLDM2UNet2DConditionModel.from_pretrained(trained / "full", subfolder="unet")
    torch.testing.assert_close(latents_of(plain_pipeline(trained / "base", unet=unet)), ours_full, rtol=1e-4, atol=1e-5)


def test_a_resumed_lora_run_ends_where_an_uninterrupted_one_does(trained, tmp_path):
    from safetensors.torch import load_file

    from baton_trainer.trainer import RewardWeightedDiffusionTrainer

    def run(out, steps, resume=None):
        config = finetune_config(trained, "lora", output_dir=str(out), max_train_steps=steps, checkpointing_steps=2, resume_from_checkpoint=resume)
        return RewardWeightedDiffusionTrainer(config).train()

    whole = load_file(run(tmp_path / "whole", 4) / "pytorch_lora_weights.safetensors")
    run(tmp_path / "split", 2)
    resumed = load_file(run(tmp_path / "split", 4, resume="latest") / "pytorch_lora_weights.safetensors")
    assert whole.keys() == resumed.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=1e-5, atol=1e-6)


def test_bf16_autocast_trains_audioldm2(trained, tmp_path, own_accelerator_state):
    from baton_trainer.trainer import RewardWeightedDiffusionTrainer

    trainer = RewardWeightedDiffusionTrainer(finetune_config(trained, "lora", output_dir=str(tmp_path / "bf16"), mixed_precision="bf16", max_train_steps=2))
    summary = json.loads((trainer.train() / "train_summary.json").read_text())
    assert np.isfinite(summary["final_loss"]) and all(p.dtype == torch.float32 for p in trainer.trainable_params)
    assert next(trainer.backend.pipe.language_model.parameters()).dtype == torch.bfloat16


def test_generate_evaluate_and_the_space_run_on_audioldm2(trained, tmp_path):
    from baton_trainer.stages.evaluate import EvaluateConfig, evaluate
    from baton_trainer.stages.generate import GenerateConfig, generate
    from spaces_demo import models as space_models

    captions = tmp_path / "captions.jsonl"
    rows = [{"caption_id": i, "caption": c, "task": "integrity", "labels": [], "split": "heldout"} for i, c in enumerate(PROMPTS)]
    captions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = generate(GenerateConfig(run_dir=str(tmp_path / "run"), model=str(trained / "base"), captions_file=str(captions), split="heldout",
                                  clips_per_caption=2, num_inference_steps=2, batch_size=3, device="cpu"))
    metadata = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(metadata) == 4 and all((out / r["file_name"]).is_file() for r in metadata)

    report = evaluate(EvaluateConfig(run_dir=str(tmp_path / "run"), model=str(trained / "base"), aligned=str(trained / "lora"), captions=str(captions),
                                     clips_per_caption=1, num_inference_steps=2, clap_model="none", device="cpu"))
    assert (report / "metrics.json").is_file()

    base = load_backend(trained / "base")
    aligned = space_models.load_aligned(base, trained / "lora")
    assert aligned.vae is base.vae and aligned.pipe.language_model is base.pipe.language_model and aligned.unet is not base.unet
    a = base.generate(PROMPTS[:1], [5], num_inference_steps=2, guidance_scale=3.0)
    b = aligned.generate(PROMPTS[:1], [5], num_inference_steps=2, guidance_scale=3.0)
    assert not np.allclose(a, b) and np.array_equal(a, base.generate(PROMPTS[:1], [5], num_inference_steps=2, guidance_scale=3.0))
