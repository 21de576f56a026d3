"""Load TANGO's original checkpoints (the declare-lab Hub layout) into a `TangoModel`.

The original layout (declare-lab/tango, tango-full, tango-full-ft-audiocaps, tango2, ...):

    main_config.json        text_encoder_name, scheduler_name, unet_model_config_path, snr_gamma, ...
    vae_config.json         AudioLDM AutoencoderKL kwargs: ddconfig, embed_dim, subband, scale_factor
    stft_config.json        TacotronSTFT kwargs: filter/hop/win length, n_mel_channels, 16 kHz, fmin/fmax
    pytorch_model_main.bin  `unet.*` (diffusers UNet2DConditionModel keys), `text_encoder.*` (T5 encoder)
    pytorch_model_vae.bin   the VAE in LDM naming, with the HiFi-GAN vocoder inside as `vocoder.*`
    pytorch_model_stft.bin  the STFT's buffers (only its mel filter bank is read, as a consistency check)

Everything is mapped by name onto diffusers' `AutoencoderKL` and `UNet2DConditionModel`,
transformers' `T5EncoderModel` and `SpeechT5HifiGan`, and a `DDPMScheduler`, and assembled into a
`TangoPipeline` with TANGO's own mel framing (`framing="tango"`). Loading is strict: a
key the checkpoint lacks, or one nothing consumes, is an error that names it. The `.bin` files are
pickles and are read with `torch.load(weights_only=True)` only.

Configs TANGO takes from outside its checkpoint are kept in `tango_configs/` (package data):
the UNet config (`configs/diffusion_model_config.json` in TANGO's repo, which the Hub repos lack),
the Stable Diffusion 2.1 noise schedule (a DDIM config TANGO loads as DDPM), and the HiFi-GAN
16 kHz / 64-mel vocoder config (hard-coded in TANGO's `audioldm/hifigan/utilities.py`). A checkpoint
folder may carry its own `vocoder_config.json` (SpeechT5HifiGanConfig fields) or UNet config file;
those win over the kept ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import AutoConfig, AutoTokenizer, SpeechT5HifiGan, SpeechT5HifiGanConfig, T5EncoderModel

from ..weight_files import WeightFileError, first_keys, load_state_dict_file, load_state_strict
from .mel import MelConfig, MelFrontEnd
from .pipeline_tango import TangoPipeline
from .tango import TangoModel

CONFIG_DIR = Path(__file__).parent / "tango_configs"
MAIN_CONFIG = "main_config.json"
VAE_CONFIG = "vae_config.json"
STFT_CONFIG = "stft_config.json"
MAIN_WEIGHTS = "pytorch_model_main.bin"
VAE_WEIGHTS = "pytorch_model_vae.bin"
STFT_WEIGHTS = "pytorch_model_stft.bin"
VOCODER_CONFIG = "vocoder_config.json"
SD21_SCHEDULERS = {"stabilityai/stable-diffusion-2-1", "stabilityai/stable-diffusion-2-1-base"}


class TangoCheckpointError(WeightFileError):
    """An original TANGO checkpoint that cannot be loaded; the message names the file, key or setting."""


def is_original_tango_folder(folder: str | Path) -> bool:
    return (Path(folder) / MAIN_CONFIG).is_file()


# ----------------------------------------------------------------------------------------------
# Files


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TangoCheckpointError(f"{path}: not found (an original TANGO checkpoint needs it)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TangoCheckpointError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise TangoCheckpointError(f"{path}: expected a JSON object")
    return data


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise TangoCheckpointError(f"{path}: not found (an original TANGO checkpoint needs it)")
    return load_state_dict_file(path, "TANGO", error=TangoCheckpointError)


def _split_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HiFi-GAN checkpoints saved before `remove_weight_norm` hold weight_g / weight_v: fold them
    into one weight (w = g * v / ||v||, norm over all but dim 0, torch's weight_norm default)."""
    out = dict(state)
    for key_g in [k for k in state if k.endswith(".weight_g")]:
        base = key_g[: -len("_g")]
        key_v = base + "_v"
        if key_v in state:
            g, v = state[key_g], state[key_v]
            norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.ndim - 1)))
            out[base] = g * v / norm
            del out[key_g], out[key_v]
    return out


# ----------------------------------------------------------------------------------------------
# VAE: AudioLDM's LDM-style AutoencoderKL -> diffusers AutoencoderKL


def vae_config_to_diffusers(vae_config: dict[str, Any], where: str = VAE_CONFIG) -> dict[str, Any]:
    """AudioLDM VAE kwargs -> `AutoencoderKL` config. Refuses, by name, what diffusers cannot express."""
    dd = vae_config.get("ddconfig")
    if not isinstance(dd, dict):
        raise TangoCheckpointError(f"{where}: lacks the 'ddconfig' mapping")
    for key in ("ch", "ch_mult", "num_res_blocks", "z_channels", "in_channels", "out_ch"):
        if key not in dd:
            raise TangoCheckpointError(f"{where}: ddconfig lacks '{key}'")
    refusals = [
        (
            list(dd.get("attn_resolutions") or []),
            "ddconfig.attn_resolutions",
            "non-empty (attention inside the VAE's down/up levels has no diffusers AutoencoderKL equivalent)",
        ),
        (int(vae_config.get("subband", 1)) > 1, "subband", "> 1 (sub-band decomposition is not in diffusers)"),
        (
            list(dd.get("downsample_time_stride4_levels") or []),
            "ddconfig.downsample_time_stride4_levels",
            "non-empty (stride-4 time resampling is not in diffusers)",
        ),
        (bool(dd.get("use_linear_attn")) or dd.get("attn_type", "vanilla") != "vanilla", "ddconfig.attn_type", "not 'vanilla'"),
        (not dd.get("double_z", True), "ddconfig.double_z", "false (diffusers' encoder always predicts mean and log-variance)"),
        (bool(dd.get("tanh_out")) or bool(dd.get("give_pre_end")), "ddconfig.tanh_out/give_pre_end", "set"),
        (not dd.get("resamp_with_conv", True), "ddconfig.resamp_with_conv", "false"),
    ]
    for bad, key, why in refusals:
        if bad:
            raise TangoCheckpointError(f"{where}: {key} is {why}; this VAE cannot be loaded into diffusers' AutoencoderKL")
    embed_dim = int(vae_config.get("embed_dim", dd["z_channels"]))
    if embed_dim != int(dd["z_channels"]):
        raise TangoCheckpointError(f"{where}: embed_dim {embed_dim} != ddconfig.z_channels {dd['z_channels']} (diffusers' quant convs need them equal)")
    levels = len(dd["ch_mult"])
    return {
        "in_channels": int(dd["in_channels"]),
        "out_channels": int(dd["out_ch"]),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [int(dd["ch"]) * int(m) for m in dd["ch_mult"]],
        "layers_per_block": int(dd["num_res_blocks"]),
        "latent_channels": int(dd["z_channels"]),
        "norm_num_groups": 32,  # AudioLDM's Normalize() is GroupNorm(32)
        "sample_size": int(dd.get("resolution", 256)),
        "scaling_factor": float(vae_config.get("scale_factor", 1.0)),
    }


_RESNET_PARTS = {"conv_shortcut": "nin_shortcut"}
_ATTENTION_PARTS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def ldm_vae_key(diffusers_key: str, num_levels: int) -> str:
    """The LDM (AudioLDM) name of one diffusers AutoencoderKL state-dict key."""
    parts = diffusers_key.split(".")
    side, rest = parts[0], parts[1:]
    if side not in ("encoder", "decoder"):
        return diffusers_key  # quant_conv, post_quant_conv
    name = ".".join(rest)
    if name.startswith("conv_norm_out."):
        return f"{side}.norm_out.{name[len('conv_norm_out.') :]}"
    if rest[0] in ("down_blocks", "up_blocks"):
        level = int(rest[1])
        if rest[0] == "up_blocks":  # diffusers runs the decoder's levels in reverse order to LDM's `up`
            level = num_levels - 1 - level
        group = "down" if rest[0] == "down_blocks" else "up"
        if rest[2] == "resnets":
            part = ".".join(rest[4:])
            for new, old in _RESNET_PARTS.items():
                part = part.replace(new, old)
            return f"{side}.{group}.{level}.block.{rest[3]}.{part}"
        if rest[2] in ("downsamplers", "upsamplers"):
            sampler = "downsample" if rest[2] == "downsamplers" else "upsample"
            return f"{side}.{group}.{level}.{sampler}.{'.'.join(rest[4:])}"
    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            return f"{side}.mid.block_{int(rest[2]) + 1}.{'.'.join(rest[3:])}"
        if rest[1] == "attentions":
            part = ".".join(rest[3:])
            layer, _, param = part.rpartition(".")
            return f"{side}.mid.attn_1.{_ATTENTION_PARTS.get(layer, layer)}.{param}"
    return diffusers_key


def convert_vae_state(ldm_state: dict[str, torch.Tensor], vae, where: str = VAE_WEIGHTS) -> dict[str, torch.Tensor]:
    """LDM VAE weights (without `vocoder.*`) -> the state dict of diffusers `vae`, strictly."""
    num_levels = len(vae.config.block_out_channels)
    expected = vae.state_dict()
    converted, used, missing = {}, set(), []
    for key, target in expected.items():
        source = ldm_vae_key(key, num_levels)
        if source not in ldm_state:
            missing.append(source)
            continue
        value = ldm_state[source]
        if value.ndim == 4 and target.ndim == 2:  # attention q/k/v/proj_out: 1x1 conv -> linear
            value = value[:, :, 0, 0]
        converted[key] = value
        used.add(source)
    unexpected = [k for k in ldm_state if k not in used]
    if missing or unexpected:
        parts = ([f"missing keys: {first_keys(missing)}"] if missing else []) + ([f"unexpected keys: {first_keys(unexpected)}"] if unexpected else [])
        raise TangoCheckpointError(f"{where} (VAE): {'; '.join(parts)}")
    return converted


# ----------------------------------------------------------------------------------------------
# Vocoder: TANGO's HiFi-GAN (weight norm removed) -> transformers SpeechT5HifiGan


def hifigan_key(speecht5_key: str) -> str:
    """The HiFi-GAN (audioldm.hifigan.Generator) name of one SpeechT5HifiGan key."""
    if speecht5_key.startswith("upsampler."):
        return "ups." + speecht5_key[len("upsampler.") :]
    return speecht5_key


def convert_vocoder_state(hifigan_state: dict[str, torch.Tensor], vocoder, where: str = VAE_WEIGHTS) -> dict[str, torch.Tensor]:
    hifigan_state = _fold_weight_norm(hifigan_state)
    expected = vocoder.state_dict()
    converted, used, missing = {}, set(), []
    for key, target in expected.items():
        if key in ("mean", "scale"):  # SpeechT5's input normalisation; TANGO feeds raw log-mels
            converted[key] = torch.zeros_like(target) if key == "mean" else torch.ones_like(target)
            continue
        source = hifigan_key(key)
        if source not in hifigan_state:
            missing.append("vocoder." + source)
            continue
        converted[key] = hifigan_state[source]
        used.add(source)
    unexpected = ["vocoder." + k for k in hifigan_state if k not in used]
    if missing or unexpected:
        parts = ([f"missing keys: {first_keys(missing)}"] if missing else []) + ([f"unexpected keys: {first_keys(unexpected)}"] if unexpected else [])
        raise TangoCheckpointError(f"{where} (vocoder): {'; '.join(parts)}")
    for key, value in converted.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise TangoCheckpointError(
                f"{where} (vocoder): key vocoder.{hifigan_key(key)} has shape {tuple(value.shape)}, the vocoder config expects "
                f"{tuple(expected[key].shape)} (put a matching {VOCODER_CONFIG} beside the checkpoint)"
            )
    return converted


# ----------------------------------------------------------------------------------------------
# Components


def _resolve_unet_config(folder: Path, main_config: dict[str, Any], override: str | Path | None) -> Path:
    if override is not None:
        path = Path(override)
        if not path.is_file():
            raise TangoCheckpointError(f"UNet config not found: {path}")
        return path
    if main_config.get("unet_model_name") and not main_config.get("unet_model_config_path"):
        raise TangoCheckpointError(
            f"{folder / MAIN_CONFIG}: unet_model_name={main_config['unet_model_name']!r} (a Stable Diffusion UNet with "
            "group_in/group_out adapters) is not supported; only TANGO UNets built from unet_model_config_path are"
        )
    relative = main_config.get("unet_model_config_path")
    if not relative:
        raise TangoCheckpointError(f"{folder / MAIN_CONFIG}: lacks 'unet_model_config_path'")
    # TANGO resolves this path against its working directory; the Hub repos do not contain it.
    for candidate in (folder / relative, folder / Path(relative).name, CONFIG_DIR / Path(relative).name):
        if candidate.is_file():
            return candidate
    raise TangoCheckpointError(
        f"{folder / MAIN_CONFIG}: unet_model_config_path {relative!r} is neither in the checkpoint folder nor a UNet config "
        f"kept in {CONFIG_DIR} ({', '.join(p.name for p in sorted(CONFIG_DIR.glob('diffusion_model*.json')))})"
    )


def _resolve_text_encoder(folder: Path, name: str) -> str:
    for candidate in (folder / name, Path(name).expanduser()):
        if candidate.is_dir():
            return str(candidate)
    return name  # a Hub id: config and tokenizer come from the Hub, or the local cache when offline


def _load_scheduler(folder: Path, scheduler_name: str | None):
    kept = CONFIG_DIR / "scheduler_config.json"
    if scheduler_name is None or scheduler_name in SD21_SCHEDULERS:
        # SD 2.1's DDIMScheduler config loaded as DDPM, as TANGO does: v_prediction, steps_offset 1,
        # clip_sample false (DDPMScheduler's own default would be true).
        return DDPMScheduler.from_config(DDPMScheduler.load_config(str(kept)))
    for candidate in (folder / scheduler_name, Path(scheduler_name)):
        if candidate.is_dir():
            sub = candidate / "scheduler" if (candidate / "scheduler").is_dir() else candidate
            return DDPMScheduler.from_pretrained(str(sub))
    try:
        return DDPMScheduler.from_pretrained(scheduler_name, subfolder="scheduler")
    except Exception as exc:
        raise TangoCheckpointError(
            f"{folder / MAIN_CONFIG}: scheduler_name {scheduler_name!r} could not be loaded ({type(exc).__name__}); "
            "give a folder with scheduler/scheduler_config.json"
        ) from None


def _check_stft(folder: Path, mel) -> None:
    """The STFT checkpoint's mel filter bank must be the one the front end computes."""
    path = folder / STFT_WEIGHTS
    if not path.is_file():
        return  # optional: only a consistency check
    state = _load_bin(path)
    basis = state.get("mel_basis")
    if basis is None:
        return
    ours = mel.mel_basis.cpu()
    if tuple(basis.shape) != tuple(ours.shape) or not torch.allclose(basis.float(), ours, atol=1e-5, rtol=1e-3):
        raise TangoCheckpointError(f"{path}: mel_basis {tuple(basis.shape)} differs from the slaney mel filter bank of {STFT_CONFIG} {tuple(ours.shape)}")


def mel_config_from_stft(stft_config: dict[str, Any], where: str = STFT_CONFIG) -> MelConfig:
    names = {
        "sample_rate": "sampling_rate",
        "n_fft": "filter_length",
        "hop_length": "hop_length",
        "win_length": "win_length",
        "n_mels": "n_mel_channels",
        "fmin": "mel_fmin",
        "fmax": "mel_fmax",
    }
    missing = [tango for tango in names.values() if tango not in stft_config]
    if missing:
        raise TangoCheckpointError(f"{where}: lacks '{missing[0]}'")
    return MelConfig(**{ours: type(getattr(MelConfig(), ours))(stft_config[tango]) for ours, tango in names.items()})


def _empty_init(build):
    """Build a module with parameters on the meta device (weights come from the checkpoint)."""

    with init_empty_weights(include_buffers=False):
        return build()


def _assign(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, optional: set[str] = frozenset()):
    # fp32 like a freshly built module; `TangoModel.to(dtype=...)` casts later
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    load_state_strict(module, state, what, optional, assign=True, error=TangoCheckpointError)
    meta = [n for n, p in list(module.named_parameters()) + list(module.named_buffers()) if p.is_meta]
    if meta:
        raise TangoCheckpointError(f"{what}: no weights for {first_keys(meta)}")
    return module


def load_original_tango(
    folder: str | Path,
    text_encoder: str | Path | None = None,
    unet_config: str | Path | None = None,
    vocoder_config: str | Path | None = None,
):
    """Build a `TangoModel` from TANGO's original checkpoint folder.

    `text_encoder` overrides main_config's `text_encoder_name` (a folder or Hub id giving the T5
    config and tokenizer; its weights are replaced by the checkpoint's `text_encoder.*`).
    `unet_config` / `vocoder_config` override the configs found in the folder or kept in the repo.
    """

    folder = Path(folder)
    main_config = _read_json(folder / MAIN_CONFIG)
    vae_config = _read_json(folder / VAE_CONFIG)
    stft_config = _read_json(folder / STFT_CONFIG)

    # UNet
    unet_config_path = _resolve_unet_config(folder, main_config, unet_config)
    unet_cfg = UNet2DConditionModel.load_config(str(unet_config_path))
    main_state = _load_bin(folder / MAIN_WEIGHTS)
    unknown = sorted({k.split(".")[0] for k in main_state} - {"unet", "text_encoder"})
    if unknown:
        bad = next(k for k in main_state if k.split(".")[0] == unknown[0])
        raise TangoCheckpointError(f"{folder / MAIN_WEIGHTS}: unexpected keys: {bad} (only unet.* and text_encoder.* are known)")
    unet = _empty_init(lambda: UNet2DConditionModel.from_config(unet_cfg))
    _assign(unet, _split_prefix(main_state, "unet."), f"{folder / MAIN_WEIGHTS} (unet, config {unet_config_path})")

    # Text encoder: config and tokenizer from text_encoder_name, weights from the .bin (the .bin wins).
    name = str(text_encoder) if text_encoder is not None else main_config.get("text_encoder_name")
    if not name:
        raise TangoCheckpointError(f"{folder / MAIN_CONFIG}: lacks 'text_encoder_name'")
    source = _resolve_text_encoder(folder, name)
    try:
        t5_config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        raise TangoCheckpointError(
            f"text encoder {name!r} (from {folder / MAIN_CONFIG}): config/tokenizer not found "
            f"({type(exc).__name__}); offline, give a local folder or a model in the HF cache (text_encoder=...)"
        ) from None
    if t5_config.model_type not in ("t5", "umt5", "mt5"):
        raise TangoCheckpointError(f"text encoder {name!r} is a {t5_config.model_type!r} model; TANGO loading supports T5 encoders")
    text_state = _split_prefix(main_state, "text_encoder.")
    if not text_state:
        raise TangoCheckpointError(f"{folder / MAIN_WEIGHTS}: missing keys: text_encoder.* (no text encoder weights)")
    t5 = _empty_init(lambda: T5EncoderModel(t5_config))
    tied = {"encoder.embed_tokens.weight"} if "shared.weight" in text_state else set()
    _assign(t5, text_state, f"{folder / MAIN_WEIGHTS} (text_encoder)", optional=tied)
    if "shared.weight" in text_state:
        t5.encoder.embed_tokens.weight = t5.shared.weight  # T5 ties its input embeddings: keep one tensor
    del main_state

    # VAE and vocoder
    vae_state = _load_bin(folder / VAE_WEIGHTS)
    vae_cfg = vae_config_to_diffusers(vae_config, str(folder / VAE_CONFIG))
    vae = _empty_init(lambda: AutoencoderKL.from_config(vae_cfg))
    hifigan_state = _split_prefix(vae_state, "vocoder.")
    ldm_state = {k: v for k, v in vae_state.items() if not k.startswith("vocoder.")}
    _assign(vae, convert_vae_state(ldm_state, vae, str(folder / VAE_WEIGHTS)), f"{folder / VAE_WEIGHTS} (VAE)")
    if not hifigan_state:
        raise TangoCheckpointError(f"{folder / VAE_WEIGHTS}: missing keys: vocoder.* (TANGO keeps its HiFi-GAN inside the VAE file)")
    voc_path = Path(vocoder_config) if vocoder_config is not None else folder / VOCODER_CONFIG
    if not voc_path.is_file():
        voc_path = CONFIG_DIR / VOCODER_CONFIG
    voc_cfg = SpeechT5HifiGanConfig(**{k: v for k, v in _read_json(voc_path).items() if not k.startswith("_")})
    voc_cfg.normalize_before = False
    vocoder = SpeechT5HifiGan(voc_cfg)
    load_state_strict(
        vocoder, convert_vocoder_state(hifigan_state, vocoder, str(folder / VAE_WEIGHTS)), f"{folder / VAE_WEIGHTS} (vocoder)", error=TangoCheckpointError
    )
    del vae_state

    # Mel front end and schedule
    mel = mel_config_from_stft(stft_config, str(folder / STFT_CONFIG))
    if mel.n_mels != voc_cfg.model_in_dim:
        raise TangoCheckpointError(f"{folder / STFT_CONFIG}: {mel.n_mels} mels but the vocoder ({voc_path}) takes {voc_cfg.model_in_dim}")
    _check_stft(folder, MelFrontEnd(mel))
    scheduler = _load_scheduler(folder, main_config.get("scheduler_name"))
    # TANGO's own front end (centred frames, read_wav_file's normalisation), its 10 s clips, DDPM sampling.
    pipe = TangoPipeline(
        vae=vae,
        text_encoder=t5,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        vocoder=vocoder,
        **{k: v for k, v in mel.to_dict().items() if k != "framing"},
        mel_framing="tango",
        duration_s=10.0,
    )
    model = TangoModel(pipe)
    model.name_or_path = str(folder)
    return model.eval()
