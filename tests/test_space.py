"""The comparison Space: model resolution, input checks, and the launched app driven through
gradio_client and plain HTTP (clips, seeds, scores, error messages, which files it serves and
prunes, uploads)."""

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import free_port

from baton_trainer.backends.tango import TangoModel
from baton_trainer.testing import save_tiny_tango
from spaces_demo import app as space
from spaces_demo import models as space_models

gradio_client = pytest.importorskip("gradio_client")

PROMPT = "a dog barks then birds chirp"
DURATION_S = 0.25  # not the tiny model's default 0.32 s, so the request's length is what counts


def make_models(root: Path) -> dict[str, Path]:
    """A tiny base model, a full-UNet export and a LoRA export that both change its output, and a
    tiny reward model: the real classes, saved the way the trainer and reward stages save them."""
    from peft import LoraConfig

    from baton_trainer.testing import save_tiny_clap
    from reward_hub import build_reward_model

    base = save_tiny_tango(root / "base")
    full = TangoModel.from_pretrained(base)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for p in full.denoiser.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    full.save_trained(root / "aligned_full", "full", base=str(base))
    lora = TangoModel.from_pretrained(base)
    torch.manual_seed(2)
    lora.denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False))
    lora.save_trained(root / "aligned_lora", "lora", base=str(base))
    reward = build_reward_model(str(save_tiny_clap(root / "clap")), head_hidden_size=16, seed=0)
    reward.save_pretrained(root / "reward_model")
    return {"base": base, "full": root / "aligned_full", "lora": root / "aligned_lora", "reward": root / "reward_model"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("space_models"))


@pytest.fixture(scope="module")
def launched(models, tmp_path_factory):
    """The app started by `main()` as a Space would: models from environment variables and CLI."""
    output_dir = tmp_path_factory.mktemp("space_outputs")
    port = free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BATON_BASE_MODEL", str(models["base"]))
        mp.setenv("BATON_REWARD_MODEL", str(models["reward"]))
        mp.setenv("BATON_DEFAULT_STEPS", "3")
        demo = space.main(
            ["--aligned_export", str(models["full"]), "--output_dir", str(output_dir), "--host", "127.0.0.1", "--port", str(port)],
            prevent_thread_lock=True,
        )
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "output_dir": output_dir, "clips_dir": output_dir / space.CLIPS_FOLDER, "demo": demo}
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(launched):
    return gradio_client.Client(launched["url"], verbose=False)


def generate(client, prompt=PROMPT, seed=3, steps=3, guidance=3.0, duration=DURATION_S):
    return client.predict(prompt, seed, steps, guidance, duration, api_name="/generate")


def read_wav(path) -> np.ndarray:
    wav, sr = sf.read(path, dtype="float32")
    assert sr == 16000 and wav.ndim == 1
    return wav


@pytest.mark.slow
def test_same_seed_same_clips_other_seed_other_clips_scores_in_unit_interval(client, launched):
    before = set(launched["clips_dir"].iterdir())
    base_wav, aligned_wav, base_img, aligned_img, base_score, aligned_score, status = generate(client, seed=3)
    base_clip, aligned_clip = read_wav(base_wav), read_wav(aligned_wav)
    assert base_clip.shape == aligned_clip.shape == (int(DURATION_S * 16000),)
    assert np.abs(base_clip).max() > 0 and not np.array_equal(base_clip, aligned_clip)  # the export changed the UNet
    assert Path(base_img).stat().st_size > 0 and Path(aligned_img).stat().st_size > 0
    assert 0.0 <= base_score <= 1.0 and 0.0 <= aligned_score <= 1.0
    assert "Seed 3" in status and "Reward: baseline" in status

    again = generate(client, seed=3)
    assert np.array_equal(read_wav(again[0]), base_clip) and np.array_equal(read_wav(again[1]), aligned_clip)
    assert again[4:6] == (base_score, aligned_score)

    other = generate(client, seed=4)
    assert not np.array_equal(read_wav(other[0]), base_clip)
    assert not np.array_equal(read_wav(other[1]), aligned_clip)

    written = sorted(p.name for p in set(launched["clips_dir"].iterdir()) - before)
    assert len(written) == 6 and all(space.CLIP_NAME.fullmatch(name) for name in written)
    assert sorted(p.name for p in launched["output_dir"].iterdir()) == [space.CLIPS_FOLDER]  # nothing beside its own folder


def call_raw(url: str, body: str) -> tuple[str, str]:
    """POST a raw JSON body (NaN and all) to the /generate event's REST route and read its result:
    ("error", message) or ("complete", data)."""
    with httpx.Client(base_url=url + "gradio_api/", timeout=60) as http:
        response = http.post("call/generate", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 200, response.text
        stream = http.get(f"call/generate/{response.json()['event_id']}").text
    event = stream.split("event: ")[-1]
    kind, _, data = event.partition("\ndata: ")
    return kind.strip(), data.strip()


def assert_one_clean_line(message, launched) -> None:
    """A message for a client: there, one line, no traceback, no server path."""
    assert isinstance(message, str) and message.strip() and message != "null", message
    assert "\n" not in message.strip() and "Traceback" not in message and 'File "' not in message, message
    for path in ("/tmp", str(launched["output_dir"]), str(Path(space.__file__).parent), tempfile.gettempdir()):
        assert path not in message, message


BAD_INPUTS = [
    ({"prompt": "   "}, "Enter a prompt"),
    ({"prompt": "beep " * 80}, "keep it to 300"),
    ({"prompt": ["a", "list"]}, "The prompt must be text"),
    ({"seed": -1}, "Seed must be a whole number from 0 to 2147483647"),
    ({"seed": "x"}, "Seed must be a whole number"),
    ({"seed": 1.5}, "Seed must be a whole number"),
    ({"steps": 0}, "Steps must be a whole number from 1 to 200, got 0"),
    ({"steps": 500}, "Steps must be a whole number from 1 to 200, got 500"),
    ({"steps": "many"}, "Steps must be a whole number from 1 to 200, got 'many'"),
    ({"steps": None}, "Steps must be a whole number"),
    ({"guidance": 11}, "Guidance must be a number from 1 to 10"),
    ({"guidance": {"a": 1}}, "Guidance must be a number"),
    ({"duration": 5.0}, "Length (s) must be a number from 0.1 to 0.32"),
    ({"duration": 1e300}, "Length (s) must be a number from 0.1 to 0.32"),
    ({"duration": "9" * 500}, "Length (s) must be a number"),
]


@pytest.mark.slow
@pytest.mark.parametrize("kwargs, message", BAD_INPUTS, ids=[f"{next(iter(k))}={str(next(iter(k.values())))[:12]}" for k, _ in BAD_INPUTS])
def test_bad_inputs_get_a_one_line_message_not_a_trace(client, launched, kwargs, message):
    with pytest.raises(gradio_client.exceptions.AppError) as error:
        generate(client, **kwargs)
    assert message in str(error.value)
    assert_one_clean_line(str(error.value), launched)
    assert len(str(error.value)) < 200  # an overlong value is shown cut short


@pytest.mark.slow
def test_malformed_requests_over_http_get_a_one_line_message(launched):
    """What gradio_client cannot send (NaN, infinity, too few inputs) through the REST route:
    each comes back as a one-line error, never Gradio's empty `{"error": null}`."""
    p = json.dumps(PROMPT)
    cases = [
        (f'{{"data": [{p}, 1, NaN, 3.0, 0.25]}}', "Steps must be a whole number from 1 to 200, got nan"),
        (f'{{"data": [{p}, 1, 3, 3.0, Infinity]}}', "Length (s) must be a number"),
        (f'{{"data": [{p}, 1e999, 3, 3.0, 0.25]}}', "Seed must be a whole number"),
        (f'{{"data": [{p}, 1, 3]}}', "needed: 5, got: 3"),
        ('{"data": [null, null, null, null, null]}', "Enter a prompt"),
    ]
    for body, message in cases:
        kind, data = call_raw(launched["url"], body)
        assert kind == "error", (body, kind, data)
        text = json.loads(data)["error"]
        assert message in (text or ""), (body, data)
        assert_one_clean_line(text, launched)
    kind, data = call_raw(launched["url"], f'{{"data": [{p}, 1, 2, 3.0, {DURATION_S}]}}')  # the same route works
    assert kind == "complete" and "Seed 1, 2 steps" in data


@pytest.mark.slow
def test_a_failing_generation_gets_one_line_without_server_paths(client, launched):
    """The clips folder replaced by a file (a disk fault mid-run): the generation fails on the
    server, and the client gets one line naming no path, not Gradio's empty error."""
    clips, away = launched["clips_dir"], launched["clips_dir"].with_name("clips-away")
    clips.rename(away)
    clips.write_text("not a folder")
    try:
        with pytest.raises(gradio_client.exceptions.AppError) as error:
            generate(client)
    finally:
        clips.unlink()
        away.rename(clips)
    assert "Generation failed on the server" in str(error.value)
    assert_one_clean_line(str(error.value), launched)
    generate(client)  # and the next request is served again


def fetch_status(url: str, path) -> tuple[int, bytes]:
    response = httpx.get(url + "gradio_api/file=" + str(path), timeout=30)
    return response.status_code, response.content


@pytest.mark.slow
def test_only_the_apps_own_clips_folder_is_served(client, launched):
    generate(client)  # at least one clip exists in the clips folder
    output_dir, clips = launched["output_dir"], launched["clips_dir"]
    own_clip = sorted(clips.glob("*.wav"))[0]
    song = own_clip.read_bytes()  # a user's file with real audio in it, beside the app's folder
    planted = [output_dir / "song.wav", output_dir.parent / "song.wav"]
    for path in planted:
        path.write_bytes(song)
    try:
        status, body = fetch_status(launched["url"], own_clip)
        assert status == 200 and body == song
        for path in [*planted, clips / ".." / "song.wav", clips / ".." / ".." / "song.wav", "/etc/passwd", Path(space.__file__), Path.cwd() / "pyproject.toml"]:
            status, body = fetch_status(launched["url"], path)
            assert status != 200 and body != song, path
    finally:
        for path in planted:
            path.unlink()
    assert [Path(p) for p in launched["demo"].allowed_paths] == [clips.resolve()]
    assert (clips / space.CLIPS_MARKER).is_file()


@pytest.mark.slow
def test_prune_deletes_only_the_apps_own_old_clips(client, launched):
    generate(client)
    clips = launched["clips_dir"]
    old = time.time() - 2 * space.OUTPUT_MAX_AGE_S
    own_old = sorted(clips.glob("*_baseline.wav"))[0]
    os.utime(own_old, (old, old))
    planted = [launched["output_dir"] / "song.wav", clips / "song.wav", clips / own_old.name.replace(".wav", ".wav.bak")]
    for path in planted:
        path.write_bytes(b"RIFF my own recording")
        os.utime(path, (old, old))
    try:
        generate(client)  # each request prunes before it writes
        assert not own_old.exists()
        assert all(path.exists() for path in planted)
        assert (clips / space.CLIPS_MARKER).is_file() and len(list(clips.glob("*_baseline.wav"))) >= 1  # the fresh clips stay
    finally:
        for path in planted:
            path.unlink()


@pytest.mark.slow
def test_a_big_upload_is_refused_and_not_kept(launched):
    upload_dir = Path(launched["demo"].server_app.uploaded_file_dir)

    def files() -> set[Path]:
        return {p for p in upload_dir.rglob("*") if p.is_file()} if upload_dir.is_dir() else set()

    before = files()
    name = f"big-{os.getpid()}-{time.time_ns()}.wav"
    response = httpx.post(launched["url"] + "gradio_api/upload", files={"files": (name, b"\0" * (5 * 2**20), "audio/wav")}, timeout=60)
    assert response.status_code == 413, response.text
    assert "maximum allowed size" in response.text
    new = files() - before
    assert not [p for p in new if p.name == name or p.stat().st_size > 2**20]
    # the limit is what refuses it: a file under 1 KB still uploads (and is removed here)
    small = httpx.post(launched["url"] + "gradio_api/upload", files={"files": (name, b"RIFF", "audio/wav")}, timeout=60)
    assert small.status_code == 200, small.text
    for path in map(Path, small.json()):
        path.unlink()
        path.parent.rmdir()


def test_the_clips_folder_is_the_apps_own(tmp_path):
    clips = space.clips_folder(tmp_path / "out")
    assert clips == (tmp_path / "out" / space.CLIPS_FOLDER).resolve() and (clips / space.CLIPS_MARKER).is_file()
    assert space.clips_folder(tmp_path / "out") == clips  # found again, marker and all
    (tmp_path / "home" / space.CLIPS_FOLDER).mkdir(parents=True)
    (tmp_path / "home" / space.CLIPS_FOLDER / "song.wav").write_bytes(b"RIFF")
    with pytest.raises(space_models.SpaceError, match="not created by the Space"):
        space.clips_folder(tmp_path / "home")
    assert sorted(p.name for p in (tmp_path / "home" / space.CLIPS_FOLDER).iterdir()) == ["song.wav"]
    (tmp_path / "empty" / space.CLIPS_FOLDER).mkdir(parents=True)  # an empty folder of that name is taken over
    assert (space.clips_folder(tmp_path / "empty") / space.CLIPS_MARKER).is_file()
    with pytest.raises(space_models.SpaceError, match="not created by the Space"):  # main() refuses before loading models
        space.main(["--output_dir", str(tmp_path / "home"), "--aligned_export", "none", "--reward_model", "none", "--base_model", str(tmp_path / "nowhere")])


def test_check_inputs_names_each_setting():
    s = space.check_inputs("  a   dog\nbarks ", 7.0, 10, 2.5, 0.2, max_duration_s=0.32)
    assert (s.prompt, s.seed, s.steps, s.guidance, s.duration_s) == ("a dog barks", 7, 10, 2.5, 0.2)
    assert space.check_inputs("x" * 300, 0, 1, 1, 0.1, 0.32).prompt == "x" * 300
    cases = [
        (("", 0, 1, 1, 0.1), "Enter a prompt"),
        (("x" * 301, 0, 1, 1, 0.1), "301 characters"),
        (("x", 1.5, 1, 1, 0.1), "Seed must be a whole number"),
        (("x", 2**31, 1, 1, 0.1), "Seed"),
        (("x", None, 1, 1, 0.1), "Seed"),
        (("x", 0, 201, 1, 0.1), "Steps must be a whole number from 1 to 200"),
        (("x", 0, 1, float("nan"), 0.1), "Guidance must be a number from 1 to 10"),
        (("x", 0, 1, 0.5, 0.1), "Guidance"),
        (("x", 0, 1, 1, 0.5), "Length (s) must be a number from 0.1 to 0.32"),
    ]
    for args, message in cases:
        with pytest.raises(space.SpaceInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            space.check_inputs(*args, max_duration_s=0.32)


def test_lora_export_shares_frozen_parts_and_leaves_the_base_unchanged(models):
    base = TangoModel.from_pretrained(models["base"])
    before = base.generate([PROMPT], [5], num_inference_steps=2, guidance_scale=3.0)
    aligned = space_models.load_aligned(base, models["lora"])
    assert aligned.vae is base.vae and aligned.text_encoder is base.text_encoder and aligned.vocoder is base.vocoder
    assert aligned.denoiser is not base.denoiser and not getattr(base.denoiser, "peft_config", None)
    after = base.generate([PROMPT], [5], num_inference_steps=2, guidance_scale=3.0)
    lora = aligned.generate([PROMPT], [5], num_inference_steps=2, guidance_scale=3.0)
    assert np.array_equal(before, after) and not np.allclose(before, lora)
    with pytest.raises(space_models.SpaceError, match="no baton_export.json"):
        space_models.load_aligned(base, models["base"])
    other_base = TangoModel.from_pretrained(save_tiny_tango(models["base"].parent / "other_base", seed=1))
    other_base.denoiser = type(other_base.denoiser)(**{**other_base.denoiser.config, "block_out_channels": (8, 16), "norm_num_groups": 4})
    with pytest.raises(space_models.SpaceError, match="does not load onto base"):
        space_models.load_aligned(other_base, models["lora"])


def _toy_layout(root: Path, models) -> tuple[Path, Path]:
    """A toy run folder (runs/toy/aligned + reward_model) and a shipped pretrained-models folder."""
    import shutil

    run = root / "work" / "runs" / "toy"
    shutil.copytree(models["lora"], run / "aligned")
    shutil.copytree(models["reward"], run / "reward_model")
    pretrained = root / "pretrained"
    shutil.copytree(models["full"], pretrained / "toy_aligned")
    shutil.copytree(models["reward"], pretrained / "toy_reward")
    return root / "work", pretrained


def test_defaults_find_the_toy_run_then_shipped_exports(models, tmp_path, monkeypatch):
    work, pretrained = _toy_layout(tmp_path, models)
    monkeypatch.chdir(work)
    monkeypatch.setattr(space_models, "REPO_ROOT", tmp_path / "elsewhere")
    monkeypatch.setattr(space_models, "_toy_pretrained", lambda: pretrained)
    for name in ("BATON_BASE_MODEL", "BATON_ALIGNED_EXPORT", "BATON_REWARD_MODEL"):
        monkeypatch.delenv(name, raising=False)

    resolved = space_models.resolve_models(space_models.SpaceConfig.from_env())
    assert Path(resolved.aligned_export).resolve() == (work / "runs" / "toy" / "aligned").resolve()
    assert Path(resolved.base_model) == models["base"]  # read from the export's baton_export.json
    assert Path(resolved.reward_model).resolve() == (work / "runs" / "toy" / "reward_model").resolve()
    assert resolved.notes == []

    import shutil

    shutil.rmtree(work / "runs")  # no local run: the shipped export and reward model
    resolved = space_models.resolve_models(space_models.SpaceConfig.from_env())
    assert Path(resolved.aligned_export) == pretrained / "toy_aligned"
    assert Path(resolved.reward_model) == pretrained / "toy_reward"

    # another base model: the toy exports do not fit it, so the page shows the baseline alone
    monkeypatch.setenv("BATON_BASE_MODEL", str(tmp_path / "some_other_model"))
    resolved = space_models.resolve_models(space_models.SpaceConfig.from_env())
    assert resolved.aligned_export is None and "only the baseline" in resolved.notes[0]

    monkeypatch.setenv("BATON_BASE_MODEL", str(models["base"]))
    monkeypatch.setenv("BATON_ALIGNED_EXPORT", "none")
    monkeypatch.setenv("BATON_REWARD_MODEL", "none")
    resolved = space_models.resolve_models(space_models.SpaceConfig.from_env())
    assert (resolved.aligned_export, resolved.reward_model) == (None, None)
    assert any("turned off" in n and "baseline" in n for n in resolved.notes)
    assert any("not scored" in n for n in resolved.notes)

    # CLI arguments win over the environment
    config = space_models.SpaceConfig.from_env(aligned_export=str(models["full"]), port=1234)
    assert config.aligned_export == str(models["full"]) and config.base_model == str(models["base"]) and config.port == 1234
    monkeypatch.setenv("BATON_DEFAULT_STEPS", "many")
    with pytest.raises(space_models.SpaceError, match="default_steps"):
        space_models.SpaceConfig.from_env()


def test_missing_models_fail_with_one_line_naming_them(models, tmp_path):
    with pytest.raises(space_models.SpaceError, match="aligned export '.*nowhere'"):
        space_models.load_models(space_models.SpaceConfig(base_model=str(models["base"]), aligned_export=str(tmp_path / "nowhere"), reward_model="none"))
    with pytest.raises(space_models.SpaceError, match="base model '.*missing'"):
        space_models.load_models(space_models.SpaceConfig(base_model=str(tmp_path / "missing"), aligned_export="none", reward_model="none"))


def test_baseline_only_page_and_examples(models, tmp_path):
    base = TangoModel.from_pretrained(models["base"])
    demo = space.build_demo(base, None, None, tmp_path / "out", toy_examples=True)
    config = demo.get_config_file()
    texts = json.dumps(config)
    assert "only the baseline is shown" in texts and "clips are not scored" in texts
    assert any(c.get("props", {}).get("label", "").startswith("Toy-world captions") for c in config["components"])
    paper = space.paper_example_captions()
    assert len(paper) == 6 and all(c in texts for c in paper)
    from baton_trainer.toyworld.events import EVENT_NAMES

    toy = space.toy_example_captions()
    assert len(toy) == 4 and all(any(e in c.lower() for e in EVENT_NAMES) for c in toy)
    assert space.unknown_words(base.tokenizer, "a dog barks near a zebra") == ["near", "zebra"]


@pytest.mark.slow
def test_script_starts_the_app(models, tmp_path):
    port = free_port()
    command = [
        sys.executable,
        str(Path(space.__file__)),
        "--base_model",
        str(models["base"]),
        "--aligned_export",
        "none",
        "--reward_model",
        "none",
        "--output_dir",
        str(tmp_path / "out"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    assert response.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, process.stdout.read()
                time.sleep(0.5)
        else:
            pytest.fail("the app did not start within 120 s")
        # baseline only: the aligned column gets nothing, and there is no reward model to score
        result = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False).predict(PROMPT, 1, 2, 3.0, DURATION_S, api_name="/generate")
        assert read_wav(result[0]).shape == (int(DURATION_S * 16000),)
        assert result[1] is None and result[3] is None and result[4] is None and result[5] is None
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_the_space_folder_installs_and_compares_in_a_fresh_venv(tmp_path):
    """The Space as it deploys: app.py, README.md and requirements.txt alone in a folder, the
    requirements installed into a fresh virtual environment (baton-trainer from a wheel of this
    checkout, which is what `baton-trainer==0.1.0` resolves to once published), then the page built
    on the models the package ships, with no run folder and no network to the Hub."""
    import shutil
    import venv

    repo = Path(__file__).resolve().parents[1]
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(repo)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    space_dir = tmp_path / "space"
    space_dir.mkdir()
    for name in ("app.py", "README.md", "requirements.txt"):
        shutil.copy(repo / "spaces_demo" / name, space_dir / name)
    # download.pytorch.org is out of reach of the build machines; the other lines install as written.
    requirements = [line for line in (space_dir / "requirements.txt").read_text().splitlines() if not line.startswith("--extra-index-url")]
    (tmp_path / "requirements-reachable.txt").write_text("\n".join(requirements) + "\n")
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    install = subprocess.run(
        # --no-compile: byte-compiling every installed module (torch's thousands) is most of an install's time, and beside the point here.
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-compile",
            "--find-links",
            str(wheels),
            "-r",
            str(tmp_path / "requirements-reachable.txt"),
            "gradio==6.31.0",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    script = (
        "import app\n"
        "from spaces_demo.models import SpaceConfig, load_models\n"
        "base, aligned, reward, notes = load_models(SpaceConfig())\n"
        "demo = app.build_demo(base, aligned, reward, 'clips', notes=notes)\n"
        "print('aligned' if aligned is not None else 'baseline only', 'scored' if reward is not None else 'unscored', notes)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = subprocess.run([str(python), "-c", script], cwd=space_dir, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1].startswith("aligned scored")


def test_the_package_ships_a_toy_aligned_export_and_reward_model_that_fit_the_toy_tango():
    """The Space compares baseline and aligned from its first start (a local runs/toy wins when there)."""
    from baton_trainer.toyworld.models import PRETRAINED_DIR, TOY_TANGO_PATH

    exports = [p for p in space_models.default_aligned_exports() if p.parent == PRETRAINED_DIR]
    assert [p.name for p in exports] == ["toy_aligned"]
    assert Path(space_models.export_base(exports[0])) == TOY_TANGO_PATH.resolve()
    rewards = [p for p in space_models.default_reward_models() if p.parent == PRETRAINED_DIR]
    assert [p.name for p in rewards] == ["toy_reward"]
    repo = Path(__file__).resolve().parents[1]
    for code in ("modeling_baton_reward.py", "pipeline_baton_reward.py"):  # the Hub code travels with the shipped model
        assert (rewards[0] / code).read_text() == (repo / "reward_hub" / code).read_text(), code
