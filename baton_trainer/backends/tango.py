"""TANGO for the trainer: `TangoModel` is the thin adapter from a `TangoPipeline` (the diffusers
pipeline in `pipeline_tango.py`) to what the trainer needs (`TextToAudioBackend`).

    latents = model.encode_audio(waveforms)   # the mel front end the model was trained on, then the VAE
    cond = model.encode_text(captions)        # the pipeline's own prompt encoding
    model.pipe(...)                           # generation is the pipeline's

A model folder is a diffusers pipeline folder (`model_index.json`, `pipeline_tango.py`, `unet/ vae/
text_encoder/ tokenizer/ vocoder/ scheduler/`), written by `save_pretrained` and read by
`from_pretrained`. Folders of the earlier layout (`baton_model.json` beside the same subfolders)
still load. The toy TANGO of `baton_trainer.toyworld` is the same class with tiny components and a
Griffin-Lim vocoder that travels in its folder (`vocoder/griffin_lim_vocoder.py`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import AutoTokenizer, SpeechT5HifiGan, T5EncoderModel

from ..hub import resolve_folder
from ..weight_files import load_pretrained
from .base import TextConditioning, TextToAudioBackend
from .griffin_lim_vocoder import GriffinLimVocoder
from .mel import MelConfig, MelFrontEnd, MelLatents
from .pipeline_tango import TangoPipeline

PIPELINE_FILE = Path(__file__).with_name("pipeline_tango.py")
LEGACY_MODEL_FILE = "baton_model.json"  # the layout before the pipeline: settings beside the same subfolders
# Components a folder keeps with a module of its own (remote code for plain diffusers users); this
# package loads them with its own class, so a model folder never makes it run code from the folder.
CUSTOM_COMPONENTS = {"griffin_lim_vocoder": "baton_trainer.backends.griffin_lim_vocoder"}


def load_tango_pipeline(folder: Path, torch_dtype: torch.dtype | None = None) -> TangoPipeline:
    """A TangoPipeline from a saved folder of either layout, every component from this package's
    classes (or diffusers' and transformers'), each loaded on its own so a bad file is named."""

    if not (folder / "model_index.json").is_file():
        settings = load_pretrained(lambda f: json.loads(Path(f).read_text(encoding="utf-8")), folder / LEGACY_MODEL_FILE, "model settings")
        return _legacy_pipeline(folder, settings)
    index = load_pretrained(lambda f: json.loads(Path(f).read_text(encoding="utf-8")), folder / "model_index.json", "a pipeline index")
    components = {}
    for name in ("vae", "text_encoder", "tokenizer", "unet", "scheduler", "vocoder"):
        library, class_name = index.get(name) or (None, None)
        try:
            component_class = TangoModel.component_class(str(library), str(class_name))
        except ValueError:
            raise ValueError(f"{folder / 'model_index.json'}: component {name} is {library}.{class_name}, which this package does not load") from None
        kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None and name in ("vae", "text_encoder", "unet") else {}
        components[name] = load_pretrained(lambda f, c=component_class, k=kwargs: c.from_pretrained(f, **k), folder / name, f"a {class_name}")
    return load_pretrained(lambda f: TangoPipeline.from_pretrained(f, **components), folder, "a TangoPipeline")


def _legacy_pipeline(folder: Path, settings: dict) -> TangoPipeline:
    """A folder of the first layout: its settings file names the vocoder class and the sampler;
    its mel front end was the half-hop framing."""

    def vocoder_from(path: str):
        if settings.get("vocoder_class") == "SpeechT5HifiGan":
            return SpeechT5HifiGan.from_pretrained(path)
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
        return GriffinLimVocoder(**{k: v for k, v in config.items() if k != "vocoder_class"})

    scheduler = load_pretrained(DDPMScheduler.from_pretrained, folder / "scheduler", "a DDPMScheduler")
    if settings.get("sampler") == "ddim":
        scheduler = DDIMScheduler.from_config(scheduler.config)
    mel = settings.get("mel", {})
    return TangoPipeline(
        vae=load_pretrained(AutoencoderKL.from_pretrained, folder / "vae", "an AutoencoderKL"),
        text_encoder=load_pretrained(T5EncoderModel.from_pretrained, folder / "text_encoder", "a T5EncoderModel"),
        tokenizer=load_pretrained(AutoTokenizer.from_pretrained, folder / "tokenizer", "a tokenizer"),
        unet=load_pretrained(UNet2DConditionModel.from_pretrained, folder / "unet", "a UNet2DConditionModel"),
        scheduler=scheduler,
        vocoder=load_pretrained(vocoder_from, folder / "vocoder", f"a {settings.get('vocoder_class')}"),
        **{k: mel[k] for k in ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels", "fmin", "fmax") if k in mel},
        mel_framing="half_hop",
        duration_s=float(settings.get("duration_s", 10.0)),
        text_max_length=settings.get("text_max_length"),
    )


class TangoModel(MelLatents, TextToAudioBackend):
    """A TangoPipeline as the trainer sees it; every component stays the pipeline's."""

    pipeline_class = TangoPipeline
    custom_components = CUSTOM_COMPONENTS
    default_snr_mode = "tango"  # TANGO's own min(snr, 5) / snr on its v-prediction loss
    cfg_dropout = 0.0  # TANGO's train.py drops 10 % of captions only with --uncondition (off by default)

    def __init__(self, pipe: TangoPipeline):
        super().__init__(pipe)
        config = pipe.config
        self.mel_config = MelConfig(
            sample_rate=config.sample_rate,
            n_fft=config.n_fft,
            hop_length=config.hop_length,
            win_length=config.win_length,
            n_mels=config.n_mels,
            fmin=config.fmin,
            fmax=config.fmax,
            framing=config.mel_framing,
        )
        self.mel = MelFrontEnd(self.mel_config)
        # The training noise schedule is the pipeline scheduler's (DDPM's add_noise and velocity on its betas).
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.sample_rate = config.sample_rate

    # -- the pipeline's components ---------------------------------------------------------------

    @property
    def duration_s(self) -> float:
        return float(self.pipe.config.duration_s)

    # -- loading and saving ----------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, export: str | Path | None = None, device=None, torch_dtype=None, revision: str | None = None
    ) -> "TangoModel":
        """A saved model folder (or a Hub id of one), then a trained export (LoRA adapter or full
        UNet, a folder or Hub id) on top when given. TANGO's original Hub layout loads through
        `baton_trainer.backends.load_backend`."""

        folder = resolve_folder(name_or_path, "model", revision)
        if not (folder / "model_index.json").is_file() and not (folder / LEGACY_MODEL_FILE).is_file():
            raise FileNotFoundError(f"{folder}: not a TANGO pipeline folder (no model_index.json)")
        model = cls(load_tango_pipeline(folder))
        model.name_or_path = str(name_or_path)
        return model.prepare(export, device, torch_dtype)

    def save_pretrained(self, folder: str | Path) -> None:
        """A diffusers pipeline folder that loads with this package, with `TangoPipeline`, and with
        plain diffusers (`trust_remote_code=True`): the pipeline file and the modules of custom
        components travel with it."""
        folder = Path(folder)
        super().save_pretrained(folder)
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        index["_class_name"] = [PIPELINE_FILE.stem, type(self.pipe).__name__]
        shutil.copyfile(PIPELINE_FILE, folder / PIPELINE_FILE.name)
        for name, (module_name, class_name) in list((k, v) for k, v in index.items() if isinstance(v, list) and k != "_class_name"):
            for short, module_path in CUSTOM_COMPONENTS.items():
                if module_name == module_path:
                    source = Path(__import__(module_path, fromlist=["_"]).__file__)
                    shutil.copyfile(source, folder / name / f"{short}.py")
                    index[name] = [short, class_name]
        (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.vae, self.text_encoder, self.vocoder]

    def preprocessing(self) -> dict:
        return {"mel": self.mel_config.to_dict(), "text_max_length": self.pipe.config.text_max_length}

    # -- encoding --------------------------------------------------------------------------------

    def num_frames(self, duration_s: float) -> int:
        return self.pipe.num_frames(duration_s)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.pipe.decode_latents(latents)

    @torch.no_grad()
    def encode_text(self, captions: list[str], duration_s: float | None = None, lyrics: list[str] | None = None) -> TextConditioning:
        self.captions_only(lyrics)
        hidden, mask = self.pipe.encode_prompt(list(captions), self.text_encoder.device)
        return TextConditioning(encoder_hidden_states=hidden, encoder_attention_mask=mask)

    def null_text(self, duration_s: float | None = None) -> TextConditioning:
        """TANGO's --uncondition zeroes a caption's T5 states: one zero token acts the same, since
        zero keys and values give the cross-attention the same output whatever the length."""
        cond = self.encode_text([""], duration_s)
        return TextConditioning(
            encoder_hidden_states=torch.zeros_like(cond.tensors["encoder_hidden_states"]), encoder_attention_mask=cond.tensors["encoder_attention_mask"]
        )

    # -- sampling --------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_latents(self, captions, seeds, num_inference_steps, guidance_scale, duration_s=None, sampler=None, progress=False):
        return self._call(captions, seeds, num_inference_steps, guidance_scale, duration_s, sampler, progress, "latent")

    @torch.no_grad()
    def generate(self, captions, seeds, num_inference_steps=200, guidance_scale=3.0, duration_s=None, progress=False, sampler=None, lyrics=None):
        self.captions_only(lyrics)
        return self._call(captions, seeds, num_inference_steps, guidance_scale, duration_s, sampler, progress, "np").astype(np.float32)

    def _call(self, captions, seeds, num_inference_steps, guidance_scale, duration_s, sampler, progress, output_type):
        generators = self.clip_generators(captions, seeds, guidance_scale)
        self.pipe.set_progress_bar_config(disable=not progress, desc="sampling", leave=False)
        return self.pipe(
            list(captions),
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            audio_length_in_s=duration_s,
            generator=generators,
            sampler=sampler,
            output_type=output_type,
        ).audios

    # -- a tiny model for tests and benchmarks ---------------------------------------------------

    @classmethod
    def tiny(cls, seed: int = 0) -> "TangoModel":
        """A randomly initialised TangoModel with tiny components (CPU, milliseconds per step)."""
        # lazy: the tiny model's classes and helpers load for tests and benchmarks only
        from transformers import T5Config

        from ..tiny_parts import tiny_hifigan, tiny_scheduler, tiny_tokenizer

        torch.manual_seed(seed)
        tokenizer = tiny_tokenizer()
        text_encoder = T5EncoderModel(
            T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, pad_token_id=0, eos_token_id=1)
        )
        vae = AutoencoderKL(
            in_channels=1,
            out_channels=1,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            scaling_factor=0.9227914214134216,
        )
        unet = UNet2DConditionModel(
            sample_size=None,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=1,
            attention_head_dim=4,
            cross_attention_dim=16,
            norm_num_groups=4,
            use_linear_projection=True,
            upcast_attention=True,
        )
        vocoder = tiny_hifigan()
        pipe = TangoPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=DDIMScheduler.from_config(tiny_scheduler().config),
            vocoder=vocoder,
            n_fft=512,
            win_length=512,
            n_mels=16,
            duration_s=0.32,
            text_max_length=32,
        )
        model = cls(pipe)
        model.name_or_path = f"tiny-tango-seed{seed}"
        return model.eval()
