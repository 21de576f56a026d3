"""Each backend besides TANGO (whose loop is the default run's, `test_default_run.py`) through the
whole loop from the command line, as a user with that model's diffusers folder runs it: `run` on the
toy world (prompts, generate, the oracle's ratings, export, reward, label, a full fine-tune,
evaluate), a LoRA `finetune`, both exports pushed (to a local folder) with cards whose
diffusers-only lines make the project's clips in a fresh interpreter with diffusers and peft alone,
and the Space comparing the base with the LoRA export."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import free_port, plain_diffusers_latents, run_stage

from baton_trainer.__main__ import CONFIG_DIR
from baton_trainer.backends import backend_class, load_backend
from baton_trainer.testing import TINY_BACKENDS

FOREIGN = [name for name in TINY_BACKENDS if name != "tango"]
SECONDS = 0.32  # every tiny model makes clips this long (Stable Audio Open's window is 0.37 s)
PROMPTS, SEEDS = ["a dog barks then birds chirp", "rain falls"], [7, 8]


def latents_of(backend_name, base, export):
    import plain_diffusers_user

    model = backend_class(json.loads((base / "model_index.json").read_text())["_class_name"]).from_pretrained(base, export=export)
    return plain_diffusers_user.latents_of(model.pipe, PROMPTS, SEEDS, SECONDS)


@pytest.mark.slow
@pytest.mark.parametrize("backend", FOREIGN)
def test_every_stage_from_the_command_line_then_the_space_and_plain_diffusers(backend, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    from spaces_demo import app as space

    base = TINY_BACKENDS[backend](tmp_path / "base")
    run_dir = tmp_path / "run"
    threads = str(torch.get_num_threads())
    # Stable Audio 3 runs without classifier-free guidance, as its distilled checkpoint does (guidance baked in)
    guidance = "1.0" if backend == "stable_audio_3" else "3.0"
    tiny = {
        "generate": ["--clips_per_caption", "3", "--num_inference_steps", "3", "--duration_s", str(SECONDS), "--guidance_scale", guidance],
        "reward": ["--epochs", "3", "--validation_fraction", "0.5"],
        "finetune": ["--max_train_steps", "2", "--train_batch_size", "4", "--report_to", "none", "--duration_s", str(SECONDS), "--use_lora", "false"],
        "evaluate": ["--clips_per_caption", "2", "--num_inference_steps", "3", "--duration_s", str(SECONDS), "--guidance_scale", guidance],
    }
    stage_keys = [arg if not arg.startswith("--") else f"--{stage}.{arg[2:]}" for stage, args in tiny.items() for arg in args]
    run_stage(
        "run",
        *("--config", str(CONFIG_DIR / "toy_flow.yaml"), "--model", str(base), "--run_dir", str(run_dir)),
        *("--pretrain_clips", "8", "--reference_clips", "8", "--rated_fraction", "0.75", "--oracle_error_rate", "0.4"),
        *("--prompts.num_integrity", "4", "--prompts.num_temporal", "4"),
        *stage_keys,
        threads=int(threads),
    )
    lora = run_dir / "aligned_lora"
    run_stage(
        "finetune",
        *("--run_dir", str(run_dir), "--model", str(base), "--output_dir", str(lora), "--use_lora", "true", "--lora_rank", "4"),
        *("--learning_rate", "5e-2", "--max_train_steps", "2", "--train_batch_size", "4", "--duration_s", str(SECONDS), "--report_to", "none"),
        threads=int(threads),
    )

    # every stage wrote its output; the clips are finite, the length asked, at the model's rate
    model_class = type(load_backend(base))
    assert model_class is backend_class(json.loads((base / "model_index.json").read_text())["_class_name"])
    rows = [json.loads(line) for line in (run_dir / "generations" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and json.loads((run_dir / "generations" / "generation_config.json").read_text())["guidance_scale"] == float(guidance)
    wav, sr = sf.read(run_dir / "generations" / rows[0]["file_name"], dtype="float32")
    assert sr == load_backend(base).sample_rate and len(wav) == int(round(SECONDS * sr)) and np.isfinite(wav).all() and np.abs(wav).max() > 0
    assert (run_dir / "reward_model" / "config.json").is_file() and (run_dir / "reward_labeled" / "state.json").is_file()
    for export, mode in ((run_dir / "aligned", "full"), (lora, "lora")):
        assert json.loads((export / "baton_export.json").read_text())["mode"] == mode
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    for name in ("base", "aligned"):
        assert 0.0 <= metrics[name]["temporal_accuracy"] <= 1.0 and math.isfinite(metrics[name]["fd"])
    # clips shorter than the toy renderer's events: no matched references, said, the rest of the report kept
    assert "fd_matched" not in metrics["base"] and f"{SECONDS} s clip" in metrics["skipped"]["fd_matched"]

    # pushed, each export's card holds diffusers-only lines that, in a fresh interpreter with diffusers
    # and peft alone, make the project's clips
    for export, name in ((lora, "lora"), (run_dir / "aligned", "full")):
        run_stage("push", "--path", str(export), "--repo_id", f"file://{tmp_path / f'pushed_{name}'}", "--run_dir", str(run_dir))
    cards = [tmp_path / f"pushed_{name}" / "README.md" for name in ("lora", "full")]
    theirs = plain_diffusers_latents(base, *cards, tmp_path / "latents.npz", PROMPTS, SEEDS, SECONDS, cards=True)
    torch.testing.assert_close(theirs["lora"], latents_of(backend, base, lora).float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(theirs["full"], latents_of(backend, base, run_dir / "aligned").float(), rtol=1e-4, atol=1e-5)

    # the Space shows both players: the base model's clip and the LoRA export's (on the base model's
    # frozen parts, which it leaves unchanged), seed-determined
    from spaces_demo import models as space_models

    base_model = load_backend(base)
    aligned = space_models.load_aligned(base_model, lora)
    assert aligned.vae is base_model.vae and aligned.text_encoder is base_model.text_encoder and aligned.denoiser is not base_model.denoiser
    port = free_port()
    demo = space.main(
        [
            *("--base_model", str(base), "--aligned_export", str(lora), "--reward_model", str(run_dir / "reward_model")),
            *("--output_dir", str(tmp_path / "space"), "--host", "127.0.0.1", "--port", str(port), "--default_steps", "3"),
        ],
        prevent_thread_lock=True,
    )
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        first = client.predict(PROMPTS[0], 5, 3, float(guidance), SECONDS, api_name="/generate")
        again = client.predict(PROMPTS[0], 5, 3, float(guidance), SECONDS, api_name="/generate")
    finally:
        demo.close()
    base_wav, sr = sf.read(first[0], dtype="float32")
    aligned_wav, _ = sf.read(first[1], dtype="float32")
    assert sr == load_backend(base).sample_rate and base_wav.shape == aligned_wav.shape == (int(round(SECONDS * sr)),)
    assert np.isfinite(base_wav).all() and np.isfinite(aligned_wav).all() and not np.allclose(base_wav, aligned_wav)
    np.testing.assert_array_equal(sf.read(again[0], dtype="float32")[0], base_wav)
    assert all(0.0 <= score <= 1.0 for score in (first[4], first[5]))
