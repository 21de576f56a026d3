"""The `generate` stage: clips + metadata.jsonl, recorded seeds, resume after a kill, bad captions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from baton_trainer.backends.tango import TangoModel
from baton_trainer.generations import GenerationError, clip_seed, read_caption_rows
from baton_trainer.stages.generate import GenerateConfig, generate
from baton_trainer.testing import save_tiny_tango

CAPTIONS = [
    {"caption_id": 0, "caption": "A dog barks and birds chirp", "task": "integrity", "labels": ["dog barks", "birds chirp"], "split": "train"},
    {"caption_id": 3, "caption": "Rain falls, then a siren, then wind", "task": "temporal", "labels": ["rain falls", "siren", "wind"], "split": "train"},
    {"caption_id": 7, "caption": "Engine hums with people talk", "task": "integrity", "labels": ["engine hums", "people talk"], "split": "heldout"},
]
ROW_KEYS = {"file_name", "clip_id", "caption", "caption_id", "clip_index", "task", "labels", "seed", "model"}
FAST = dict(num_inference_steps=2, duration_s=0.32, device="cpu", batch_size=3, clips_per_caption=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_tango(tmp_path_factory.mktemp("tiny-tango"))


@pytest.fixture(scope="module")
def backend(model_dir):
    return TangoModel.from_pretrained(model_dir)


def write_run(folder: Path, rows=CAPTIONS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines() if line.strip()]


def test_writes_clips_and_metadata_by_the_contract(tmp_path, model_dir, backend):
    run = write_run(tmp_path / "run")
    out = generate(GenerateConfig(run_dir=str(run), model=str(model_dir), **FAST))
    rows = read_rows(out)
    assert [r["clip_id"] for r in rows] == ["00000_0", "00000_1", "00003_0", "00003_1"]  # train split only
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["file_name"] == f"clips/{row['clip_id']}.wav" and row["model"] == str(model_dir)
        assert row["seed"] == clip_seed(0, row["caption_id"], row["clip_index"])
        wav, sr = sf.read(out / row["file_name"], dtype="float32")
        assert sr == 16000 and wav.shape == (5120,)
    assert rows[2]["labels"] == ["rain falls", "siren", "wind"] and rows[2]["task"] == "temporal"
    assert len({r["seed"] for r in rows}) == len(rows)
    # Any clip can be regenerated alone from its recorded seed (up to 16-bit PCM rounding).
    row = rows[3]
    again = backend.generate([row["caption"]], [row["seed"]], num_inference_steps=2, guidance_scale=3.0, duration_s=0.32)[0]
    wav, _ = sf.read(out / row["file_name"], dtype="float32")
    np.testing.assert_allclose(wav, np.clip(again, -1, 1), atol=2e-4)


def test_split_filter_and_plain_text_captions(tmp_path, backend):
    run = write_run(tmp_path / "run")
    out = generate(GenerateConfig(run_dir=str(run), split="heldout", out_dir=str(tmp_path / "held"), **FAST), backend=backend)
    assert [r["clip_id"] for r in read_rows(out)] == ["00007_0", "00007_1"]
    text = tmp_path / "prompts.txt"
    text.write_text("a dog barks\n\nrain falls then wind\n")
    out = generate(GenerateConfig(captions_file=str(text), out_dir=str(tmp_path / "txt"), **{**FAST, "clips_per_caption": 1}), backend=backend)
    rows = read_rows(out)
    assert [(r["caption_id"], r["caption"], r["task"], r["labels"]) for r in rows] == [(0, "a dog barks", "", []), (2, "rain falls then wind", "", [])]


class FailingBackend:
    """Wraps the real backend and dies after `calls` generate calls (a kill mid-run)."""

    def __init__(self, inner, calls):
        self.inner, self.calls, self.sample_rate = inner, calls, inner.sample_rate

    def generate(self, *args, **kwargs):
        if self.calls == 0:
            raise KeyboardInterrupt("killed")
        self.calls -= 1
        return self.inner.generate(*args, **kwargs)


class CountingBackend(FailingBackend):
    def __init__(self, inner):
        super().__init__(inner, calls=10**6)
        self.captions = []

    def generate(self, captions, *args, **kwargs):
        self.captions.extend(captions)
        return super().generate(captions, *args, **kwargs)


def test_resumes_after_a_kill_without_duplicates(tmp_path, backend):
    run = write_run(tmp_path / "run")
    config = GenerateConfig(run_dir=str(run), **{**FAST, "batch_size": 1, "clips_per_caption": 3})
    with pytest.raises(KeyboardInterrupt):
        generate(config, backend=FailingBackend(backend, calls=3))
    out = run / "generations"
    assert len(read_rows(out)) == 3
    # What a kill at the worst moments leaves: a wav whose row was never appended, a half-written
    # row, and a temporary file of an unfinished wav.
    rows_text = (out / "metadata.jsonl").read_text().splitlines(keepends=True)
    (out / "metadata.jsonl").write_text("".join(rows_text[:2]) + rows_text[2][:25])
    (out / "clips" / ".00003_1.wav.abc.tmp").write_bytes(b"RIFF")
    counting = CountingBackend(backend)
    generate(config, backend=counting)
    assert len(counting.captions) == 3  # only the 3 missing clips were made
    rows = read_rows(out)
    ids = [r["clip_id"] for r in rows]
    assert ids == [f"{c:05d}_{k}" for c in (0, 3) for k in range(3)]
    assert sorted(p.name for p in (out / "clips").iterdir()) == [f"{i}.wav" for i in ids]
    # A finished run is a no-op, and a run with other sampling settings is refused.
    generate(config, backend=FailingBackend(backend, calls=0))
    assert [r["clip_id"] for r in read_rows(out)] == ids
    with pytest.raises(GenerationError, match="guidance_scale=3.0"):
        generate(GenerateConfig(run_dir=str(run), guidance_scale=5.0, **FAST), backend=backend)


@pytest.mark.slow
def test_resumes_after_sigkill_of_the_cli(tmp_path, model_dir, backend):
    run = write_run(tmp_path / "run")
    args = [
        "--run_dir",
        str(run),
        "--model",
        str(model_dir),
        "--num_inference_steps",
        "30",
        "--duration_s",
        "0.32",
        "--device",
        "cpu",
        "--batch_size",
        "1",
        "--clips_per_caption",
        "3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "baton_trainer", "generate", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metadata = run / "generations" / "metadata.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metadata.is_file() and len(metadata.read_text().splitlines()) >= 1:
            break
        time.sleep(0.05)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL) if killed else None
    proc.wait()
    assert killed, "the generation finished before it could be killed"
    assert len(read_rows(run / "generations")) < 6
    config = GenerateConfig(run_dir=str(run), model=str(model_dir), num_inference_steps=30, duration_s=0.32, device="cpu", batch_size=6, clips_per_caption=3)
    generate(config, backend=backend)
    ids = [r["clip_id"] for r in read_rows(run / "generations")]
    assert ids == [f"{c:05d}_{k}" for c in (0, 3) for k in range(3)]
    assert sorted(p.name for p in (run / "generations" / "clips").iterdir()) == [f"{i}.wav" for i in ids]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        (json.dumps(CAPTIONS[0]) + "\n{not json\n", "line 2 is not valid JSON"),
        (json.dumps(CAPTIONS[0]) + "\n" + json.dumps({"caption_id": 1, "caption": "x"}) + "\n", "line 2 lacks the key 'task'"),
        (json.dumps(CAPTIONS[0]) + "\n\n" + json.dumps(CAPTIONS[0]) + "\n", "line 3: caption_id 0 repeats line 1"),
        (json.dumps({**CAPTIONS[0], "caption_id": "a"}) + "\n", "line 1: caption_id must be a non-negative integer"),
    ],
)
def test_malformed_captions_are_refused_with_their_line(tmp_path, text, message):
    path = tmp_path / "captions.jsonl"
    path.write_text(text)
    with pytest.raises(GenerationError, match=message):
        read_caption_rows(path)
    with pytest.raises(GenerationError, match=message):
        generate(GenerateConfig(run_dir=str(tmp_path), **FAST), backend=object())


def test_seeds_are_stable_and_distinct():
    assert clip_seed(0, 12, 3) == clip_seed(0, 12, 3)
    seeds = {clip_seed(s, c, k) for s in (0, 1) for c in range(50) for k in range(5)}
    assert len(seeds) == 500 and all(0 <= s < 2**31 for s in seeds)
