"""Loading TANGO's original checkpoint layout, converting it, and sampling with guidance.

The test writes a tiny checkpoint in TANGO's ORIGINAL file layout and key names: tiny diffusers /
transformers modules with random weights, whose state dicts are mapped BACK to TANGO's names by
an inverse mapping written here (independently of the loader), saved with torch.save.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from baton_trainer.backends import load_backend
from baton_trainer.backends.tango import TangoModel
from baton_trainer.backends.tango_original import TangoCheckpointError, is_original_tango_folder, load_original_tango
from baton_trainer.stages.convert_tango import ConvertTangoConfig, convert_tango
from baton_trainer.tiny_parts import tiny_tokenizer

N_MELS = 16
STFT = {"filter_length": 512, "hop_length": 160, "win_length": 512, "n_mel_channels": N_MELS, "sampling_rate": 16000, "mel_fmin": 0, "mel_fmax": 8000}
VAE = {
    "image_key": "fbank",
    "subband": 1,
    "embed_dim": 4,
    "time_shuffle": 1,
    "scale_factor": 0.9227914214134216,
    "ddconfig": {
        "double_z": True,
        "z_channels": 4,
        "resolution": 256,
        "downsample_time": False,
        "in_channels": 1,
        "out_ch": 1,
        "ch": 32,
        "ch_mult": [1, 2],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
    },
}
UNET = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": None,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "attention_head_dim": 4,
    "cross_attention_dim": 16,
    "norm_num_groups": 4,
    "use_linear_projection": True,
    "upcast_attention": True,
}
VOCODER = {
    "model_in_dim": N_MELS,
    "sampling_rate": 16000,
    "upsample_initial_channel": 16,
    "upsample_rates": [5, 4, 8],
    "upsample_kernel_sizes": [10, 8, 16],
    "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3]],
    "normalize_before": False,
}


# -- the inverse mapping (diffusers / transformers names -> TANGO's original names) ------------------


def to_ldm_vae(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    renames = [
        ("conv_norm_out", "norm_out"),
        ("conv_shortcut", "nin_shortcut"),
        ("attentions.0.group_norm", "attn_1.norm"),
        ("attentions.0.to_q", "attn_1.q"),
        ("attentions.0.to_k", "attn_1.k"),
        ("attentions.0.to_v", "attn_1.v"),
        ("attentions.0.to_out.0", "attn_1.proj_out"),
        ("mid_block.resnets.0", "mid.block_1"),
        ("mid_block.resnets.1", "mid.block_2"),
        ("mid_block.attn_1", "mid.attn_1"),
    ]
    out = {}
    for key, value in state.items():
        new = key
        for a, b in renames:
            new = new.replace(a, b)
        parts = new.split(".")
        if parts[1] in ("down_blocks", "up_blocks"):
            level = int(parts[2]) if parts[1] == "down_blocks" else levels - 1 - int(parts[2])
            group = "down" if parts[1] == "down_blocks" else "up"
            if parts[3] == "resnets":
                new = ".".join([parts[0], group, str(level), "block", *parts[4:]])
            else:  # downsamplers.0.conv -> downsample.conv
                new = ".".join([parts[0], group, str(level), parts[3][:-2], *parts[5:]])
        if ".attn_1." in new and new.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM attention projections are 1x1 convs
        out[new] = value.clone()
    return out


def to_hifigan(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"vocoder." + k.replace("upsampler.", "ups."): v.clone() for k, v in state.items() if k not in ("mean", "scale")}


def tiny_modules(seed: int = 0):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, pad_token_id=0, eos_token_id=1))
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[32, 64],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        scaling_factor=VAE["scale_factor"],
    )
    unet = UNet2DConditionModel.from_config({k: v for k, v in UNET.items() if not k.startswith("_")})
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**VOCODER))
    with torch.no_grad():  # random, not zero-initialised, norms and biases, so a wrong mapping shows
        for module in (vae, unet, vocoder):
            for p in module.parameters():
                p.add_(0.02 * torch.randn_like(p))
    return tokenizer, t5, vae, unet, vocoder


def write_original_tango(folder: Path, seed: int = 0, vae_config: dict | None = None) -> dict:
    """A tiny TANGO checkpoint in the original layout; returns the source modules."""
    from baton_trainer.backends.mel import MelConfig, MelFrontEnd

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer, t5, vae, unet, vocoder = tiny_modules(seed)
    # A T5 folder for config + tokenizer, with OTHER weights than the checkpoint's: the .bin must win.
    t5_folder = folder / "t5-tiny"
    from transformers import T5EncoderModel

    T5EncoderModel(t5.config).save_pretrained(t5_folder)
    tokenizer.save_pretrained(t5_folder)
    (folder / "configs").mkdir(exist_ok=True)
    (folder / "configs" / "diffusion_model_config.json").write_text(json.dumps(UNET))
    (folder / "vocoder_config.json").write_text(json.dumps(VOCODER))
    (folder / "main_config.json").write_text(
        json.dumps(
            {
                "text_encoder_name": "t5-tiny",
                "scheduler_name": "stabilityai/stable-diffusion-2-1",
                "unet_model_name": None,
                "unet_model_config_path": "configs/diffusion_model_config.json",
                "snr_gamma": 5.0,
                "freeze_text_encoder": True,
                "uncondition": False,
            }
        )
    )
    (folder / "vae_config.json").write_text(json.dumps(vae_config or VAE))
    (folder / "stft_config.json").write_text(json.dumps(STFT))
    main = {f"unet.{k}": v.clone() for k, v in unet.state_dict().items()}
    main.update({f"text_encoder.{k}": v.clone() for k, v in t5.state_dict().items()})
    torch.save(main, folder / "pytorch_model_main.bin")
    vae_state = to_ldm_vae(vae.state_dict(), levels=2)
    vae_state.update(to_hifigan(vocoder.state_dict()))
    torch.save(vae_state, folder / "pytorch_model_vae.bin")
    mel = MelFrontEnd(MelConfig(n_fft=512, win_length=512, n_mels=N_MELS))
    torch.save({"mel_basis": mel.mel_basis.clone(), "stft_fn.forward_basis": torch.zeros(514, 1, 512)}, folder / "pytorch_model_stft.bin")
    return {"t5": t5, "vae": vae, "unet": unet, "vocoder": vocoder}


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tango-original")
    sources = write_original_tango(folder)
    return folder, sources


@pytest.fixture(scope="module")
def model(original):
    return load_backend(original[0])


def _assert_same_state(module, source, name):
    ours, theirs = module.state_dict(), source.state_dict()
    assert set(ours) == set(theirs), name
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), f"{name}: {key} differs"


def test_loads_every_weight_from_the_original_layout(original, model):
    folder, src = original
    assert is_original_tango_folder(folder)
    _assert_same_state(model.denoiser, src["unet"], "unet")
    _assert_same_state(model.vae, src["vae"], "vae")
    _assert_same_state(model.text_encoder, src["t5"], "text_encoder")  # the .bin's, not the T5 folder's
    _assert_same_state(model.vocoder, src["vocoder"], "vocoder")
    assert model.vae.config.scaling_factor == pytest.approx(0.9227914214134216)
    assert model.vocoder.config.normalize_before is False
    assert torch.all(model.vocoder.mean == 0) and torch.all(model.vocoder.scale == 1)
    sched = model.noise_scheduler.config
    assert (type(model.noise_scheduler).__name__, sched.prediction_type, sched.steps_offset, sched.clip_sample) == ("DDPMScheduler", "v_prediction", 1, False)
    assert (sched.beta_start, sched.beta_end, sched.beta_schedule, sched.num_train_timesteps) == (0.00085, 0.012, "scaled_linear", 1000)
    assert model.mel_config.n_mels == N_MELS and model.mel_config.n_fft == 512
    assert model.mel_config.framing == "tango" and type(model.pipe.scheduler).__name__ == "DDPMScheduler"  # TANGO's own framing and sampler


def test_vae_mapping_agrees_with_diffusers_converter(original, model):
    """diffusers' own LDM VAE converter, run on the same file, gives the same weights."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    state = torch.load(original[0] / "pytorch_model_vae.bin", weights_only=True)
    theirs = convert_ldm_vae_checkpoint({k: v for k, v in state.items() if not k.startswith("vocoder.")}, dict(model.vae.config))
    ours = model.vae.state_dict()
    assert set(theirs) == set(ours)
    for key in ours:
        assert torch.equal(ours[key], theirs[key].reshape(ours[key].shape)), key


def test_generates_clips_of_the_requested_length_and_encodes_back(model):
    clips = model.generate(["a dog barks", "rain falls then birds chirp"], [1, 2], num_inference_steps=3, guidance_scale=3.0, duration_s=0.3)
    assert clips.shape == (2, 4800) and clips.dtype == np.float32 and np.all(np.isfinite(clips))
    again = model.generate(["a dog barks"], [1], num_inference_steps=3, guidance_scale=3.0, duration_s=0.3)
    np.testing.assert_allclose(again[0], clips[0], atol=1e-5)
    latents = model.encode_audio(torch.from_numpy(clips))
    frames = model.num_frames(0.3)  # 0.3 s -> 30 frames -> padded to a multiple of 4
    assert frames == 32
    assert latents.shape == (2, 4, frames // 2, N_MELS // 2)
    # 10.24 s of audio at TANGO's real shapes would be (8, 256, 16); here the tiny VAE halves once.


def test_converted_folder_gives_identical_outputs(original, model, tmp_path):
    dst = convert_tango(ConvertTangoConfig(src=str(original[0]), dst=str(tmp_path / "converted")))
    assert (dst / "model_index.json").is_file() and (dst / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    converted = TangoModel.from_pretrained(dst)
    kwargs = dict(num_inference_steps=3, guidance_scale=2.5, duration_s=0.2)
    a = model.generate(["a dog barks"], [7], **kwargs)
    b = converted.generate(["a dog barks"], [7], **kwargs)
    np.testing.assert_array_equal(a, b)
    wav = torch.from_numpy(a)
    assert torch.equal(model.encode_audio(wav), converted.encode_audio(wav))
    with pytest.raises(TangoCheckpointError, match="not empty"):
        convert_tango(ConvertTangoConfig(src=str(original[0]), dst=str(dst)))


def test_guidance_one_is_the_conditional_prediction(model):
    torch.manual_seed(0)
    latents = torch.randn(2, 4, 8, 8)
    t = torch.tensor(500)
    pipe = model.pipe
    with torch.no_grad():
        hidden, mask = pipe.encode_prompt(["a dog barks", "siren then wind"], torch.device("cpu"))
        uncond, uncond_mask = pipe.encode_unconditional(2, hidden.shape[1], torch.device("cpu"))
        direct = model.denoiser(latents, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
        direct_uncond = model.denoiser(latents, t, encoder_hidden_states=uncond, encoder_attention_mask=uncond_mask).sample
        guided_one = pipe.denoise(latents, t, hidden, mask, None, None, 1.0)  # what a call with guidance 1 runs
        guided = pipe.denoise(latents, t, hidden, mask, uncond, uncond_mask, 3.0)
    torch.testing.assert_close(guided_one, direct)
    torch.testing.assert_close(guided, direct_uncond + 3.0 * (direct - direct_uncond), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(guided, direct)  # guidance does something


def _rewrite_bin(folder: Path, name: str, edit) -> None:
    state = torch.load(folder / name, weights_only=True)
    edit(state)
    torch.save(state, folder / name)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    folder = tmp_path / "ckpt"
    write_original_tango(folder)
    _rewrite_bin(folder, "pytorch_model_main.bin", lambda s: s.pop("unet.conv_in.weight"))
    with pytest.raises(TangoCheckpointError, match=r"missing keys: conv_in\.weight"):
        load_original_tango(folder)
    _rewrite_bin(folder, "pytorch_model_main.bin", lambda s: s.update({"unet.conv_in.weight": torch.zeros(16, 4, 3, 3), "unet.extra.bias": torch.zeros(1)}))
    with pytest.raises(TangoCheckpointError, match=r"unexpected keys: extra\.bias"):
        load_original_tango(folder)
    _rewrite_bin(folder, "pytorch_model_main.bin", lambda s: s.pop("unet.extra.bias"))
    _rewrite_bin(folder, "pytorch_model_vae.bin", lambda s: s.pop("encoder.mid.attn_1.q.weight"))
    with pytest.raises(TangoCheckpointError, match=r"missing keys: encoder\.mid\.attn_1\.q\.weight"):
        load_original_tango(folder)
    _rewrite_bin(
        folder, "pytorch_model_vae.bin", lambda s: s.update({"encoder.mid.attn_1.q.weight": torch.zeros(64, 64, 1, 1), "vocoder.ups.9.weight": torch.zeros(1)})
    )
    with pytest.raises(TangoCheckpointError, match=r"unexpected keys: vocoder\.ups\.9\.weight"):
        load_original_tango(folder)
    _rewrite_bin(folder, "pytorch_model_vae.bin", lambda s: s.pop("vocoder.ups.9.weight"))
    _rewrite_bin(folder, "pytorch_model_main.bin", lambda s: s.update({"unet.conv_in.weight": torch.zeros(16, 8, 3, 3)}))
    with pytest.raises(TangoCheckpointError, match=r"conv_in\.weight has shape \(16, 8, 3, 3\)"):
        load_original_tango(folder)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["ddconfig"].update(attn_resolutions=[64]), "attn_resolutions"),
        (lambda c: c.update(subband=2), "subband"),
        (lambda c: c.update(embed_dim=8), "embed_dim"),
    ],
)
def test_vae_configs_diffusers_cannot_express_are_refused(tmp_path, edit, message):
    config = json.loads(json.dumps(VAE))
    edit(config)
    folder = tmp_path / "ckpt"
    write_original_tango(folder, vae_config=config)
    with pytest.raises(TangoCheckpointError, match=message):
        load_original_tango(folder)


def test_unet_config_falls_back_to_the_kept_tango_config(tmp_path):
    from baton_trainer.backends.tango_original import CONFIG_DIR, _resolve_unet_config

    assert _resolve_unet_config(tmp_path, {"unet_model_config_path": "configs/diffusion_model_config.json"}, None) == CONFIG_DIR / "diffusion_model_config.json"
    kept = json.loads((CONFIG_DIR / "diffusion_model_config.json").read_text())
    assert kept["block_out_channels"] == [320, 640, 1280, 1280] and kept["attention_head_dim"] == [5, 10, 20, 20]
    assert kept["cross_attention_dim"] == 1024 and kept["in_channels"] == 8 and kept["upcast_attention"] is True
    with pytest.raises(TangoCheckpointError, match="unet_model_config_path 'nowhere.json'"):
        _resolve_unet_config(tmp_path, {"unet_model_config_path": "nowhere.json"}, None)


def test_loads_through_a_hub_id_from_the_local_cache(original, tmp_path, monkeypatch):
    """Offline, a Hub id resolves through huggingface_hub's cache (the same path a download takes)."""
    import shutil

    import huggingface_hub.constants as hf_constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--declare-lab--tango-tiny"
    shutil.copytree(original[0], repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = load_backend("declare-lab/tango-tiny")
    assert loaded.name_or_path == "declare-lab/tango-tiny"
    _assert_same_state(loaded.denoiser, original[1]["unet"], "unet")


def test_kept_unet_config_is_tangos_866m_unet():
    from diffusers import UNet2DConditionModel

    from baton_trainer.backends.tango_original import CONFIG_DIR

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(CONFIG_DIR / "diffusion_model_config.json")))
    assert sum(p.numel() for p in unet.parameters()) == 865_933_768


def test_convert_tango_cli_stage(original, tmp_path):
    from baton_trainer.__main__ import main

    assert main(["convert-tango", str(original[0]), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model_index.json").is_file()
    assert main(["convert-tango", str(tmp_path / "missing"), str(tmp_path / "out2")]) == 1


@pytest.mark.slow
def test_a_converted_tango_runs_in_plain_diffusers_and_sounds_the_same(original, model, tmp_path):
    from test_backends import run_plain_diffusers

    dst = convert_tango(ConvertTangoConfig(src=str(original[0]), dst=str(tmp_path / "converted")))
    prompts = ["a dog barks", "siren then wind"]
    plain = run_plain_diffusers(tmp_path, dst, steps=3, seconds=0.2, prompts=prompts)
    ours = model.generate(prompts, [0, 1], num_inference_steps=3, guidance_scale=3.0, duration_s=0.2)
    np.testing.assert_allclose(plain, ours, rtol=0, atol=1e-5)
