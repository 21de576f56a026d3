"""TANGO as a diffusers pipeline: the folder loads in plain diffusers, exports load the diffusers way,
and the training target agrees with the sampler."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from backend_contract import finetune_config
from helpers import save_preference, save_pretrain, train

from baton_trainer.backends import load_backend
from baton_trainer.backends.pipeline_tango import TangoPipeline
from baton_trainer.backends.tango import TangoModel
from baton_trainer.losses import baton_loss, denoising_target
from baton_trainer.testing import save_tiny_tango
from baton_trainer.toyworld.models import TOY_TANGO_PATH

PROMPTS = ["a dog barks then beep", "rain falls with hum"]
SEEDS = [3, 4]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny base model and, trained from it, a LoRA export and a full export."""
    from baton_trainer.trainer import DiffusionTrainer

    root = tmp_path_factory.mktemp("backends")
    save_tiny_tango(root / "base")
    save_preference(root / "feedback", n=8)
    save_pretrain(root / "pretrain", n=8)
    for mode in ("lora", "full"):
        config = finetune_config(root, mode)  # the backend contract's
        train(DiffusionTrainer(config))
    return root


def latents_of(model_or_pipe):
    pipe = model_or_pipe.pipe if isinstance(model_or_pipe, TangoModel) else model_or_pipe
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    return pipe(PROMPTS, num_inference_steps=3, guidance_scale=2.0, generator=generators, output_type="latent").audios


def test_a_saved_folder_is_a_diffusers_pipeline_folder(trained):
    index = json.loads((trained / "base" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_tango", "TangoPipeline"] and (trained / "base" / "pipeline_tango.py").is_file()
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["vocoder"] == ["transformers", "SpeechT5HifiGan"]
    pipe = TangoPipeline.from_pretrained(trained / "base")
    out = pipe(PROMPTS[:1], num_inference_steps=2, guidance_scale=3.0, generator=[torch.Generator().manual_seed(0)])
    assert out.audios.shape == (1, int(0.32 * 16000)) and out.audios.dtype == np.float32
    again = pipe(PROMPTS[:1], num_inference_steps=2, guidance_scale=3.0, generator=[torch.Generator().manual_seed(0)]).audios
    assert np.array_equal(out.audios, again)  # one generator per clip: the seed decides
    other = pipe(PROMPTS[:1], num_inference_steps=2, guidance_scale=3.0, generator=[torch.Generator().manual_seed(1)]).audios
    assert not np.array_equal(out.audios, other)
    assert pipe.model_cpu_offload_seq == "text_encoder->unet->vae->vocoder"
    with pytest.raises(ValueError, match="finite"):
        pipe(PROMPTS[:1], num_inference_steps=1, guidance_scale=float("nan"))


def test_a_clips_latents_do_not_depend_on_its_batch_neighbours(trained):
    pipe = TangoPipeline.from_pretrained(trained / "base")
    both = pipe(PROMPTS, num_inference_steps=2, guidance_scale=3.0, output_type="latent", generator=[torch.Generator().manual_seed(s) for s in SEEDS]).audios
    alone = pipe(PROMPTS[1:], num_inference_steps=2, guidance_scale=3.0, output_type="latent", generator=[torch.Generator().manual_seed(SEEDS[1])]).audios
    torch.testing.assert_close(both[1:], alone, rtol=1e-4, atol=1e-5)


def test_the_diffusers_lora_format_and_full_export_reproduce_the_trainers_model(trained):
    from diffusers import UNet2DConditionModel

    assert (trained / "lora" / "pytorch_lora_weights.safetensors").is_file()  # diffusers' own file name and keys
    ours_lora = latents_of(TangoModel.from_pretrained(trained / "base", export=trained / "lora"))
    pipe = TangoPipeline.from_pretrained(trained / "base")
    pipe.load_lora_weights(trained / "lora")
    torch.testing.assert_close(latents_of(pipe), ours_lora, rtol=1e-4, atol=1e-5)
    assert (latents_of(TangoPipeline.from_pretrained(trained / "base")) - ours_lora).abs().max() > 1e-3  # the adapter does something

    ours_full = latents_of(TangoModel.from_pretrained(trained / "base", export=trained / "full"))
    unet = UNet2DConditionModel.from_pretrained(trained / "full", subfolder="unet")
    torch.testing.assert_close(latents_of(TangoPipeline.from_pretrained(trained / "base", unet=unet)), ours_full, rtol=1e-4, atol=1e-5)


PLAIN_DIFFUSERS = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    sys.modules["baton_trainer"] = None  # this package is not there: only torch, diffusers and transformers
    sys.modules["reward_hub"] = None
    from diffusers import DiffusionPipeline

    folder, lora, out, steps, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    if lora != "-":
        pipe.load_lora_weights(lora)
    prompts = json.loads(sys.argv[6])
    audio = pipe(prompts, num_inference_steps=steps, guidance_scale=3.0, audio_length_in_s=seconds,
                 generator=[torch.Generator().manual_seed(s) for s in range(len(prompts))]).audios
    np.save(out, audio)
    print(type(pipe).__module__, type(pipe).__name__)
    """
)


def run_plain_diffusers(tmp_path, folder, lora="-", steps=3, seconds=0.32, prompts=PROMPTS):
    script = tmp_path / "plain.py"
    script.write_text(PLAIN_DIFFUSERS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")
    # The same thread count as this process: Griffin-Lim's iterations amplify a change in the
    # order of float reductions to 0.1 in the waveform, so two thread counts never agree to 1e-4.
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(lora), str(tmp_path / "audio.npy"), str(steps), str(seconds), json.dumps(prompts)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "diffusers_modules.local.pipeline_tango TangoPipeline"  # the folder's code ran
    return np.load(tmp_path / "audio.npy")


@pytest.mark.slow
def test_plain_diffusers_loads_the_folder_and_the_lora_and_makes_the_same_audio(trained, tmp_path):
    plain = run_plain_diffusers(tmp_path, trained / "base", trained / "lora")
    ours = TangoModel.from_pretrained(trained / "base", export=trained / "lora").generate(PROMPTS, list(range(len(PROMPTS))), 3, 3.0)
    np.testing.assert_allclose(plain, ours, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_plain_diffusers_runs_the_toy_tango_with_the_vocoder_it_carries(tmp_path):
    prompts = ["Beep, then hum, then hiss"]
    plain = run_plain_diffusers(tmp_path, TOY_TANGO_PATH, steps=4, seconds=2.56, prompts=prompts)
    ours = load_backend(TOY_TANGO_PATH).generate(prompts, [0], num_inference_steps=4, guidance_scale=3.0)
    assert (TOY_TANGO_PATH / "vocoder" / "griffin_lim_vocoder.py").is_file()
    np.testing.assert_allclose(plain, ours, rtol=0, atol=1e-4)


def test_the_training_target_is_what_the_sampler_inverts(trained):
    """A latent noised to step t, handed the true target, comes back to x0 through the pipeline's
    own scheduler: the trainer's target and the sampler agree (v-prediction here)."""
    model = TangoModel.from_pretrained(trained / "base")
    scheduler = model.pipe.scheduler
    scheduler.set_timesteps(10)
    x0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    for t in scheduler.timesteps[::3]:
        timesteps = torch.full((2,), int(t))
        noisy = model.noise_scheduler.add_noise(x0, noise, timesteps)
        target = denoising_target(model.noise_scheduler, x0, noise, timesteps)
        recovered = scheduler.step(target, int(t), noisy).pred_original_sample
        torch.testing.assert_close(recovered, x0, rtol=1e-4, atol=1e-4)
        loss, _ = baton_loss(target, target, torch.ones(2))
        assert loss.item() == 0.0  # the loss at the exact target


def test_the_code_shipped_in_the_toy_folder_is_the_packages():
    """The toy TANGO folder carries the pipeline and vocoder files for plain diffusers; they stay in step."""
    from pathlib import Path

    import baton_trainer.backends.griffin_lim_vocoder as vocoder_module
    import baton_trainer.backends.pipeline_tango as pipeline_module

    assert (TOY_TANGO_PATH / "pipeline_tango.py").read_text() == Path(pipeline_module.__file__).read_text()
    assert (TOY_TANGO_PATH / "vocoder" / "griffin_lim_vocoder.py").read_text() == Path(vocoder_module.__file__).read_text()


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_an_export_from_a_gathered_state_dict_is_the_export_from_the_module(trained, mode, tmp_path):
    """FSDP and DeepSpeed hand the trainer the denoiser's whole state gathered from the shards: the
    export written from it holds the same tensors and loads the same way as one from the module."""
    from safetensors.torch import load_file

    model = TangoModel.from_pretrained(trained / "base", export=trained / mode)
    model.save_trained(tmp_path / "module", mode)
    state = model.denoiser.state_dict()
    model.save_trained(tmp_path / "gathered", mode, state_dict={k: v.clone() for k, v in state.items()})
    model.save_trained(tmp_path / "doubled", mode, state_dict={k: 2 * v for k, v in state.items()})  # the file comes from the state given
    name = "pytorch_lora_weights.safetensors" if mode == "lora" else "unet/diffusion_pytorch_model.safetensors"
    module, gathered, doubled = (load_file(tmp_path / folder / name) for folder in ("module", "gathered", "doubled"))
    assert module.keys() == gathered.keys() == doubled.keys()
    assert all(torch.equal(module[k], gathered[k]) and torch.equal(2 * module[k], doubled[k]) for k in module)
    torch.testing.assert_close(latents_of(TangoModel.from_pretrained(trained / "base", export=tmp_path / "gathered")), latents_of(model), rtol=0, atol=0)
