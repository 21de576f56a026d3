"""ACE-Step 1.5 on the backend contract (`backend_contract.py`): rectified flow on the pipeline's
shift-3 Euler grid, the condition encoder's learned null conditioning."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from accelerate import Accelerator
from backend_contract import *  # noqa: F403  the contract's tests and its `trained` fixture, run on this backend
from backend_contract import flow_sampler_inverts
from helpers import preference_rows, run_stage

from baton_trainer.__main__ import CONFIG_DIR
from baton_trainer.backends import TextConditioning, load_backend
from baton_trainer.data import PREFERENCE_FEATURES, build_dataset, load_preference_dataset, with_lyrics
from baton_trainer.latent_cache import LatentCache
from baton_trainer.testing import save_tiny_ace_step, save_tiny_tango

BACKEND = "ace_step"
CFG_DROPOUT = 0.15  # ACE-Step 1.5's cfg_ratio


def sampler_inverts(model, x0, noise, i):
    return flow_sampler_inverts(model, x0, noise, i, model.pipe._get_timestep_schedule(10, shift=model.flow_shift).tolist())


def dropped_as_the_models_training_drops_it(model, text, row):
    """ACE-Step's training: the whole conditioning replaced by the learned null_condition_emb."""
    states = text.tensors["encoder_hidden_states"][row : row + 1]
    null = model.pipe.condition_encoder.null_condition_emb.expand_as(states).clone()
    return TextConditioning(encoder_hidden_states=null, encoder_attention_mask=text.tensors["encoder_attention_mask"][row : row + 1])


def test_lyrics_go_from_the_captions_file_through_every_stage_to_the_model(tmp_path):
    """A captions file with lyrics, then the loop from the command line: each clip is made with its
    caption's lyrics, the rated and reward-labelled sets carry them, and the fine-tune conditions on them."""
    base = save_tiny_ace_step(tmp_path / "base")
    run_dir = tmp_path / "run"
    common = ["--config", str(CONFIG_DIR / "toy_flow.yaml"), "--model", str(base), "--run_dir", str(run_dir), "--pretrain_clips", "8", "--reference_clips", "8"]
    run_stage("run", *common, "--stages", '["prompts"]', "--prompts.num_integrity", "4", "--prompts.num_temporal", "4")
    captions = [json.loads(line) for line in (run_dir / "captions.jsonl").read_text().splitlines()]
    for i, row in enumerate(captions):
        row["lyrics"] = f"[verse]\nla la {'la ' * i}" if row["split"] == "train" else ""  # the held-out ones instrumental
    (run_dir / "captions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in captions))
    stage_keys = [
        *("--generate.clips_per_caption", "3", "--generate.num_inference_steps", "3", "--generate.duration_s", "0.32"),
        *("--reward.epochs", "3", "--reward.validation_fraction", "0.5"),
        *("--finetune.max_train_steps", "2", "--finetune.train_batch_size", "4", "--finetune.report_to", "none", "--finetune.duration_s", "0.32"),
    ]
    later = '["generate", "ratings", "export", "reward", "label", "finetune"]'  # on the captions with lyrics
    run_stage("run", *common, "--stages", later, "--rated_fraction", "0.75", "--oracle_error_rate", "0.4", *stage_keys, threads=torch.get_num_threads())

    lyrics_of = {row["caption_id"]: row["lyrics"] for row in captions}
    rows = [json.loads(line) for line in (run_dir / "generations" / "metadata.jsonl").read_text().splitlines()]
    assert all(r.get("lyrics", "") == lyrics_of[r["caption_id"]] for r in rows) and any(r.get("lyrics") for r in rows)
    model = load_backend(base)
    sung = next(r for r in rows if r.get("lyrics"))
    clip = lambda words: model.generate([sung["caption"]], [sung["seed"]], num_inference_steps=3, guidance_scale=3.0, duration_s=0.32, lyrics=words)[0]  # noqa: E731
    written, _ = sf.read(run_dir / "generations" / sung["file_name"], dtype="float32")
    np.testing.assert_allclose(written, clip([sung["lyrics"]]), atol=1e-4)  # 16-bit PCM
    assert np.abs(clip([sung["lyrics"]]) - clip([""])).max() > 1e-3  # the lyrics change the clip
    for folder in ("feedback", "reward_labeled"):
        ds = load_preference_dataset(run_dir / folder)
        assert [words for words in ds["lyrics"]] == [lyrics_of[c] for c in ds["caption_id"]], folder
    assert json.loads((run_dir / "aligned" / "baton_export.json").read_text())["mode"] == "full"


def test_the_latent_cache_conditions_on_each_rows_lyrics_and_a_model_without_lyrics_refuses_them(tmp_path):
    columns = preference_rows(4)
    columns["lyrics"] = ["", "oh oh", "", "la la la"]
    ds = build_dataset(columns, with_lyrics(PREFERENCE_FEATURES))
    model = load_backend(save_tiny_ace_step(tmp_path / "ace"))
    encoded = LatentCache(model, Accelerator(cpu=True), tmp_path / "cache", 0.32).encode(ds, torch.ones(4), "feedback")
    assert encoded.lyrics == columns["lyrics"]
    expected = model.encode_text(columns["caption"], 0.32, lyrics=columns["lyrics"])
    torch.testing.assert_close(encoded.text.tensors["encoder_hidden_states"], expected.tensors["encoder_hidden_states"])
    sung, plain = (
        encoded.text.tensors["encoder_attention_mask"][1].sum(),
        model.encode_text(columns["caption"][1:2], 0.32).tensors["encoder_attention_mask"].sum(),
    )
    assert sung > plain  # the lyrics' tokens are in the conditioning
    tango = load_backend(save_tiny_tango(tmp_path / "tango"))
    with pytest.raises(ValueError, match="TangoModel is conditioned on captions only"):
        LatentCache(tango, Accelerator(cpu=True), tmp_path / "cache", 0.32).encode(ds, torch.ones(4), "feedback")


def test_online_objectives_refuse_rows_with_lyrics_they_would_sample_without(tmp_path):
    from baton_trainer.stages.finetune import FinetuneConfig, finetune
    from baton_trainer.testing import save_tiny_clap

    columns = preference_rows(4)
    columns["lyrics"] = ["la", "", "la la", ""]
    build_dataset(columns, with_lyrics(PREFERENCE_FEATURES)).save_to_disk(str(tmp_path / "feedback"))
    config = FinetuneConfig(
        run_dir=str(tmp_path / "run"),
        model=str(save_tiny_ace_step(tmp_path / "ace")),
        feedback_dataset=str(tmp_path / "feedback"),
        output_dir=str(tmp_path / "out"),
        objective="grpo",
        rewards=[{"name": "clap", "model": str(save_tiny_clap(tmp_path / "clap"))}],
        max_train_steps=1,
        duration_s=0.32,
        report_to="none",
    )
    with pytest.raises(ValueError, match="grpo: rollouts sample from captions alone, and these rows have lyrics"):
        finetune(config)
