"""BATON Space: the same prompt and seed through a baseline and a BATON-aligned text-to-audio model.

    python spaces_demo/app.py [--base_model PATH_OR_HUB_ID] [--aligned_export PATH_OR_HUB_ID]
                              [--reward_model PATH_OR_HUB_ID] [--output_dir DIR] [--host H] [--port P] [--share]

Each setting also reads an environment variable (a Space's "Variables"): BATON_BASE_MODEL,
BATON_ALIGNED_EXPORT, BATON_REWARD_MODEL, BATON_OUTPUT_DIR, BATON_DEVICE. With none set it runs
offline on the toy world shipped in the package: the toy TANGO as baseline, the aligned export of
a local toy run (`runs/toy/aligned`) or a shipped one, and the matching reward model. Without an
aligned export it shows the baseline alone and says so. Which models, and loading them, is
`spaces_demo/models.py`; this file is the page.

Visitors type a prompt and pick a seed, steps and guidance; both models sample from the same seed,
the page plays both clips, draws their spectrograms and shows the reward model's score of each.
Requests go through Gradio's queue one at a time. Clips are written only into a folder the app
creates and owns inside the output folder (`OUTPUT_DIR/baton-space-clips/`, marked by a
`.baton-space-clips` file); that folder is the only one it serves (`allowed_paths`) and the only
one it prunes, and only clips of its own naming are deleted there. Uploads are capped at
`MAX_UPLOAD_SIZE` (the page takes none). The generate event is `/generate` for `gradio_client`;
it takes its inputs raw (`preprocess=False`) so that every bad value gets `check_inputs`'s
one-line message.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# gradio at module level, as in baton_trainer.annotation.app: Gradio resolves the handler's
# `gr.Progress` annotation (a string under `from __future__ import annotations`) through this
# module's globals to inject the progress tracker.
import gradio as gr
import numpy as np

from baton_trainer.audio import save_wav
from baton_trainer.backends.base import TextToAudioBackend
from baton_trainer.captions import make_caption
from baton_trainer.evaluation.test_captions import load_test_captions
from baton_trainer.formatting import display_path, format_number
from baton_trainer.serving import OneLineErrorBlocks, client_message
from baton_trainer.spectrogram import spectrogram_image
from baton_trainer.toyworld.events import EVENT_NAMES
from spaces_demo.models import SpaceConfig, SpaceError, load_models

MAX_PROMPT_CHARS = 300
MAX_SEED = 2**31 - 1
STEPS_RANGE = (1, 200)
GUIDANCE_RANGE = (1.0, 10.0)
MIN_DURATION_S = 0.1
OUTPUT_MAX_AGE_S = 3600.0  # clips older than this are deleted from the app's clips folder
CLIPS_FOLDER = "baton-space-clips"  # the app's own folder inside the output folder
CLIPS_MARKER = ".baton-space-clips"  # written when the app creates CLIPS_FOLDER; no marker, not ours
CLIP_NAME = re.compile(r"\d{8}-\d{6}_[0-9a-f]{8}_seed\d+_(baseline|aligned)\.wav")  # the names `generate` writes
MAX_UPLOAD_SIZE = "1kb"  # nothing on the page uploads; Gradio refuses bigger uploads with 413

logger = logging.getLogger(__name__)


class SpaceInputError(ValueError):
    """A visitor's input out of range (empty or overlong prompt, bad seed, steps, guidance, length)."""


# -- one comparison ------------------------------------------------------------------------------


@dataclass
class Settings:
    prompt: str
    seed: int
    steps: int
    guidance: float
    duration_s: float


def check_inputs(prompt: Any, seed: Any, steps: Any, guidance: Any, duration_s: Any, max_duration_s: float) -> Settings:
    """Validated settings, or SpaceInputError with a one-line message for the visitor. The values
    are taken as an API client may send them (any JSON: strings, null, NaN, lists)."""
    if prompt is not None and not isinstance(prompt, str):
        raise SpaceInputError("The prompt must be text.")
    prompt = " ".join((prompt or "").split())
    if not prompt:
        raise SpaceInputError("Enter a prompt: describe the sounds you want to hear.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise SpaceInputError(f"The prompt is {len(prompt)} characters long; keep it to {MAX_PROMPT_CHARS}.")

    def number(value: Any, name: str, low: float, high: float, integer: bool):
        try:
            x = float(value) if not isinstance(value, bool) else float("nan")
        except (TypeError, ValueError, OverflowError):
            x = float("nan")
        if not np.isfinite(x) or (integer and x != int(x)) or not low <= x <= high:
            kind = "a whole number" if integer else "a number"
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise SpaceInputError(f"{name} must be {kind} from {format_number(float(low), None)} to {format_number(float(high), None)}, got {shown}.")
        return int(x) if integer else x

    return Settings(
        prompt=prompt,
        seed=number(seed, "Seed", 0, MAX_SEED, True),
        steps=number(steps, "Steps", *STEPS_RANGE, True),
        guidance=number(guidance, "Guidance", *GUIDANCE_RANGE, False),
        duration_s=number(duration_s, "Length (s)", MIN_DURATION_S, max_duration_s, False),
    )


def unknown_words(tokenizer, prompt: str) -> list[str]:
    """Words the model's tokenizer maps to its unknown token (the toy model knows few words)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return []
    words: list[str] = []
    for word in re.findall(r"[\w']+", prompt):
        if unk in tokenizer(word, add_special_tokens=False).input_ids and word not in words:
            words.append(word)
    return words


def clips_folder(output_dir: str | os.PathLike) -> Path:
    """The app's own folder for clips, `output_dir/baton-space-clips`, created with a marker file
    on first use. A folder of that name that the app did not create (no marker, not empty) is
    refused, so the app never serves or prunes files that are not its own."""
    folder = Path(output_dir).resolve() / CLIPS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / CLIPS_MARKER
    if not marker.is_file():
        if folder.is_symlink() or any(folder.iterdir()):
            raise SpaceError(f"{folder} was not created by the Space (no {CLIPS_MARKER} in it); move it away or choose another output folder")
        marker.write_text("Written by spaces_demo/app.py: this folder holds the Space's clips, deleted after an hour.\n", encoding="utf-8")
    return folder


def prune_outputs(clips_dir: Path, max_age_s: float = OUTPUT_MAX_AGE_S) -> None:
    """Delete the app's clips older than `max_age_s` from its own folder: regular files named as
    `generate` names them, nothing else (a visitor's or operator's files there stay)."""
    cutoff = time.time() - max_age_s
    for path in clips_dir.iterdir():
        if not CLIP_NAME.fullmatch(path.name):
            continue
        try:
            if path.is_file() and not path.is_symlink() and path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            pass  # removed by a concurrent prune


def _is_toy(model: TextToAudioBackend) -> bool:
    return type(model.vocoder).__name__ == "GriffinLimVocoder"


def toy_example_captions() -> list[str]:
    """A few captions of the toy world's events, in the forms the toy model was trained on."""

    n = EVENT_NAMES
    return [
        make_caption([n[5 % len(n)], n[1 % len(n)]], "integrity"),
        make_caption([n[3 % len(n)], n[7 % len(n)]], "integrity", "with"),
        make_caption([n[2 % len(n)], n[6 % len(n)], n[0]], "temporal"),
        make_caption([n[4 % len(n)], n[5 % len(n)], n[7 % len(n)]], "temporal", "then"),
    ]


def paper_example_captions(per_task: int = 3) -> list[str]:
    """The first captions of the paper's 2-label (integrity) and 3-label (temporal) test lists."""

    return [row["caption"] for task in ("integrity", "temporal") for row in load_test_captions(task)[:per_task]]


def build_demo(
    base: TextToAudioBackend,
    aligned: TextToAudioBackend | None,
    reward_model: Any,
    output_dir: str | os.PathLike,
    notes: list[str] | None = None,
    toy_examples: bool | None = None,
    default_steps: int | None = None,
) -> gr.Blocks:
    """The comparison page for loaded models; clips are written into `clips_folder(output_dir)`.

    The returned Blocks has its queue set up (one generation at a time); launch it with
    `launch(demo, output_dir, ...)` so that only that folder is served.
    """
    output_dir = Path(output_dir).resolve()
    clips_dir = clips_folder(output_dir)
    notes = list(notes or [])
    if aligned is None and not any("aligned" in n for n in notes):
        notes.append("No aligned model loaded: only the baseline is shown.")
    if reward_model is None and not any("reward" in n for n in notes):
        notes.append("No reward model loaded: clips are not scored.")
    toy = _is_toy(base) if toy_examples is None else toy_examples
    max_duration = float(base.duration_s)
    steps_default = default_steps or (25 if toy else 50)
    sample_rate = base.sample_rate

    def generate(prompt, seed, steps, guidance, duration_s, progress: gr.Progress = gr.Progress(track_tqdm=True)):
        # Inputs arrive raw (preprocess=False): check_inputs is the one judge of them, and every
        # failure reaches the client as a one-line gr.Error, never Gradio's empty error.
        try:
            s = check_inputs(prompt, seed, steps, guidance, duration_s, max_duration)
        except SpaceInputError as exc:
            raise gr.Error(client_message(str(exc)), title="Check the settings", print_exception=False) from None
        try:
            return compare(s, progress)
        except gr.Error:
            raise
        except Exception as exc:  # the server log gets the traceback, the visitor one line
            logger.exception("generation failed for %r", s)
            raise gr.Error(f"Generation failed on the server ({type(exc).__name__}); try other settings or try again later.", print_exception=False) from None

    def compare(s: Settings, progress: gr.Progress):
        clips_dir = clips_folder(output_dir)  # made again if a cleaner removed it
        prune_outputs(clips_dir)
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}_{uuid.uuid4().hex[:8]}_seed{s.seed}"
        models = [("baseline", base)] + ([("aligned", aligned)] if aligned is not None else [])
        clips: dict[str, np.ndarray] = {}
        for i, (name, model) in enumerate(models):
            progress(i / (len(models) + 1), desc=f"{name}: sampling {s.steps} steps")
            try:
                wav = model.generate([s.prompt], [s.seed], num_inference_steps=s.steps, guidance_scale=s.guidance, duration_s=s.duration_s, progress=True)[0]
            except ValueError as exc:  # e.g. a prompt the tokenizer or model refuses
                raise gr.Error(client_message(f"The {name} model could not generate: {exc}"), print_exception=False) from None
            clips[name] = wav
        progress(len(models) / (len(models) + 1), desc="scoring and drawing")
        scores: dict[str, float | None] = {name: None for name in ("baseline", "aligned")}
        if reward_model is not None:
            values = reward_model.score([s.prompt] * len(clips), list(clips.values()), sampling_rate=sample_rate)
            scores.update({name: round(float(v), 4) for name, v in zip(clips, values.tolist())})
        paths: dict[str, str | None] = {"baseline": None, "aligned": None}
        images: dict[str, np.ndarray | None] = {"baseline": None, "aligned": None}
        for name, wav in clips.items():
            path = clips_dir / f"{stem}_{name}.wav"
            save_wav(path, wav, sample_rate)
            paths[name] = str(path)
            images[name] = spectrogram_image(wav, sample_rate, title=f"{name}: seed {s.seed}")
        lines = [f"Seed {s.seed}, {s.steps} steps, guidance {s.guidance:g}, {s.duration_s:g} s."]
        if scores["baseline"] is not None and scores["aligned"] is not None:
            delta = scores["aligned"] - scores["baseline"]
            lines.append(f"Reward: baseline **{format_number(scores['baseline'])}**, aligned **{format_number(scores['aligned'])}** ({delta:+.3f}).")
        unknown = unknown_words(base.tokenizer, s.prompt)
        if unknown:
            lines.append(f"The models do not know these words and ignore them: {', '.join(unknown)}.")
        return (
            paths["baseline"],
            paths["aligned"],
            images["baseline"],
            images["aligned"],
            scores["baseline"],
            scores["aligned"],
            "\n\n".join(lines),
        )

    aligned_name = display_path(aligned.name_or_path) if aligned is not None else "none"
    reward_name = display_path(getattr(getattr(reward_model, "config", None), "_name_or_path", "")) or ("loaded" if reward_model is not None else "none")
    with OneLineErrorBlocks(title="BATON: baseline vs aligned", delete_cache=(1800, int(OUTPUT_MAX_AGE_S))) as demo:
        gr.Markdown(
            "# BATON: baseline vs aligned text-to-audio\n"
            "Type a prompt: the baseline model and the BATON-aligned model (fine-tuned with human feedback) "
            "sample from the **same seed**, so differences come from the alignment. The reward model, trained "
            "on human ratings, scores how well each clip matches the prompt (0 to 1).\n\n"
            f"Baseline: `{display_path(base.name_or_path)}` · aligned: `{aligned_name}` · reward model: `{reward_name}`"
            + "".join(f"\n\n> {note}" for note in notes)
        )
        with gr.Row():
            prompt_box = gr.Textbox(
                label="Prompt",
                lines=2,
                scale=4,
                elem_id="baton-prompt",
                placeholder=toy_example_captions()[0] if toy else "A dog barks, then a bell rings",
                info=f"up to {MAX_PROMPT_CHARS} characters",
            )
            generate_button = gr.Button("Generate", variant="primary", scale=1, elem_id="baton-generate")
        with gr.Row():
            seed_box = gr.Number(label="Seed", value=0, precision=0, info=f"0 to {MAX_SEED}", elem_id="baton-seed")
            steps_slider = gr.Slider(*STEPS_RANGE, value=min(steps_default, STEPS_RANGE[1]), step=1, label="Steps", elem_id="baton-steps")
            guidance_slider = gr.Slider(*GUIDANCE_RANGE, value=3.0, step=0.5, label="Guidance", elem_id="baton-guidance")
            duration_slider = gr.Slider(MIN_DURATION_S, max_duration, value=max_duration, step=0.01, label="Length (s)", elem_id="baton-duration")
        with gr.Row():
            with gr.Column():
                gr.Markdown("### Baseline")
                base_audio = gr.Audio(label="Baseline", type="filepath", format="wav", interactive=False, elem_id="baton-base-audio")
                base_image = gr.Image(label="Baseline spectrogram", type="numpy", format="png", interactive=False, elem_id="baton-base-spectrogram")
                base_score = gr.Number(label="Reward (baseline)", precision=3, interactive=False, elem_id="baton-base-score")
            with gr.Column(visible=aligned is not None):
                gr.Markdown("### Aligned (BATON)")
                aligned_audio = gr.Audio(label="Aligned", type="filepath", format="wav", interactive=False, elem_id="baton-aligned-audio")
                aligned_image = gr.Image(label="Aligned spectrogram", type="numpy", format="png", interactive=False, elem_id="baton-aligned-spectrogram")
                aligned_score = gr.Number(label="Reward (aligned)", precision=3, interactive=False, elem_id="baton-aligned-score")
        status_md = gr.Markdown(elem_id="baton-status")
        if toy:
            gr.Examples([[c] for c in toy_example_captions()], inputs=[prompt_box], label="Toy-world captions (what the toy model knows)", cache_examples=False)
        gr.Examples([[c] for c in paper_example_captions()], inputs=[prompt_box], label="The paper's test captions (2 and 3 events)", cache_examples=False)

        inputs = [prompt_box, seed_box, steps_slider, guidance_slider, duration_slider]
        outputs = [base_audio, aligned_audio, base_image, aligned_image, base_score, aligned_score, status_md]
        generate_button.click(generate, inputs, outputs, api_name="generate", preprocess=False)
        prompt_box.submit(generate, inputs, outputs, api_name=False, preprocess=False)
    # One generation at a time (a CPU Space has no room for two); visitors wait their turn in line.
    demo.queue(default_concurrency_limit=1, max_size=32)
    demo.output_dir = output_dir
    demo.clips_dir = clips_dir
    return demo


def launch(
    demo: gr.Blocks, output_dir: str | os.PathLike, host: str | None = None, port: int | None = None, share: bool = False, prevent_thread_lock: bool = False
) -> gr.Blocks:
    """Serve the page; of the disk, only the app's clips folder under `output_dir` (and Gradio's
    own cache) is readable through /gradio_api/file=, and uploads over MAX_UPLOAD_SIZE are refused."""
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        allowed_paths=[str(clips_folder(output_dir))],
        max_file_size=MAX_UPLOAD_SIZE,
        prevent_thread_lock=prevent_thread_lock,
        footer_links=["api"],
    )
    return demo


def main(argv: list[str] | None = None, prevent_thread_lock: bool = False) -> gr.Blocks:
    parser = argparse.ArgumentParser(description="BATON Space: compare a baseline and an aligned text-to-audio model.")
    for name, f in SpaceConfig.__dataclass_fields__.items():
        if name == "share":
            parser.add_argument("--share", action="store_true", default=None, help=f.metadata["help"])
        else:
            parser.add_argument(f"--{name}", type=int if name in ("port", "default_steps") else str, default=None, help=f.metadata["help"])
    config = SpaceConfig.from_env(**vars(parser.parse_args(argv)))
    output_dir = Path(config.output_dir or Path(tempfile.gettempdir()) / "baton-space")
    clips_dir = clips_folder(output_dir)  # before the models load: a folder that is not ours fails fast
    base, aligned, reward, notes = load_models(config)
    print(f"baseline {base.name_or_path}; aligned {aligned.name_or_path if aligned else 'none'}; clips go to {clips_dir}")
    for note in notes:
        print(note)
    demo = build_demo(base, aligned, reward, output_dir, notes=notes, default_steps=config.default_steps)
    return launch(demo, output_dir, host=config.host, port=config.port, share=bool(config.share), prevent_thread_lock=prevent_thread_lock)


__all__ = ["SpaceInputError", "build_demo", "check_inputs", "clips_folder", "launch", "main", "prune_outputs"]

if __name__ == "__main__":
    main()
