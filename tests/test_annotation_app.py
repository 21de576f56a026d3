"""The annotation app, launched on 127.0.0.1 and driven through gradio_client like a browser would."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port
from test_annotation import make_generations

from baton_trainer.annotation import AnnotationError, AnnotationStore
from baton_trainer.annotation.app import ClipServer
from baton_trainer.annotation.logins import read_users_file
from baton_trainer.audio import AudioError, load_audio
from baton_trainer.spectrogram import spectrogram_image
from baton_trainer.stages.annotate import AnnotateConfig, annotate
from baton_trainer.stages.export import ExportConfig, export_feedback

gradio_client = pytest.importorskip("gradio_client")


def _launch(config: AnnotateConfig):
    app = annotate(config, prevent_thread_lock=True)
    client = gradio_client.Client(f"http://127.0.0.1:{config.server_port}/", verbose=False)
    return app, client


@pytest.mark.slow
def test_rating_campaign_through_the_app_lands_in_store_and_export(tmp_path):
    run = tmp_path / "run"
    make_generations(run / "generations", num_captions=2, clips_per_caption=2)
    config = AnnotateConfig(run_dir=str(run), ratings_per_clip=2, server_port=free_port())
    app, client = _launch(config)
    try:
        assert {"/start", "/aligned", "/not_aligned", "/skip"} <= set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
        clip_id, caption, audio, image, progress, status = client.predict("", api_name="/start")
        assert clip_id == "" and "Enter your name" in status

        answers = {
            "alice": {"00000_0": "/aligned", "00000_1": "/aligned", "00001_0": "/not_aligned", "00001_1": "/skip"},
            "bob": {"00000_0": "/aligned", "00000_1": "/not_aligned", "00001_0": "/not_aligned", "00001_1": "/aligned"},
            "carol": {"00001_1": "/not_aligned"},
        }
        shown: dict[str, list[str]] = {}
        for name, by_clip in answers.items():
            result = client.predict(name, api_name="/start")
            while result[0]:
                clip_id, caption, audio, image, progress, status = result
                shown.setdefault(name, []).append(clip_id)
                assert caption.startswith("### caption ")
                served, original = load_audio(audio)[0], load_audio(run / "generations" / "clips" / f"{clip_id}.wav")[0]
                assert served.shape == original.shape and np.abs(served - original).max() < 1e-3  # the clip, as 16-bit PCM data
                assert Path(image).is_file()
                assert name in progress
                result = client.predict(name, clip_id, api_name=by_clip[clip_id])
            assert "No clips left for you" in result[5]
        # nobody saw a clip twice; alice's skipped clip still needed a second rating, so carol got it
        assert sorted(shown["alice"]) == sorted(shown["bob"]) == ["00000_0", "00000_1", "00001_0", "00001_1"]
        assert shown["carol"] == ["00001_1"]
        assert shown["bob"][0] == "00001_1"  # fair order: the clip with the fewest ratings first
        assert "4/4 clips have 2 rating(s)" in client.predict("dave", api_name="/start")[4]
    finally:
        app.close()
        app.annotation_store.close()

    with AnnotationStore(run / "annotations.sqlite") as store:
        ratings = store.ratings()
    assert len(ratings) == 9
    assert sum(r["label"] == -2 for r in ratings) == 1
    export_feedback(ExportConfig(run_dir=str(run), ties="drop"))
    from baton_trainer.data import load_preference_dataset

    ds = load_preference_dataset(run / "feedback")
    assert sorted(zip(ds["caption_id"], ds["clip_index"], ds["feedback"])) == [(0, 0, 1), (1, 0, 0)]
    stats = json.loads((run / "feedback_agreement.json").read_text())
    assert stats["exported_rows"] == 2 and stats["tied_clips"] == 2 and stats["ratings"] == 8 and stats["skips"] == 1
    export_feedback(ExportConfig(run_dir=str(run), ties="positive"))
    assert sorted(load_preference_dataset(run / "feedback")["feedback"]) == [0, 1, 1, 1]


@pytest.mark.slow
def test_missing_corrupt_and_escaping_clips_show_an_error_and_move_on(tmp_path):
    run = tmp_path / "run"
    gen = make_generations(run / "generations", num_captions=2, clips_per_caption=2)
    (gen / "clips" / "00000_0.wav").unlink()  # missing
    (gen / "clips" / "00000_1.wav").write_bytes(b"RIFF not really a wav file")  # corrupt
    outside = tmp_path / "secret.wav"
    (gen / "clips" / "00001_0.wav").rename(outside)
    (gen / "clips" / "00001_0.wav").symlink_to(outside)  # resolves outside the generations folder
    config = AnnotateConfig(run_dir=str(run), ratings_per_clip=1, server_port=free_port())
    app, client = _launch(config)
    try:
        clip_id, caption, audio, image, progress, status = client.predict("alice", api_name="/start")
        assert clip_id == "00001_1"
        assert "Clip 00000_0 could not be played" in status and "not found" in status
        assert "Clip 00000_1 could not be played" in status and "unreadable" in status
        assert "Clip 00001_0 could not be played" in status and "outside" in status
        assert "3 unplayable" in progress
        result = client.predict("alice", clip_id, api_name="/aligned")
        assert result[0] == "" and "No clips left" in result[5]
        # a second person is not sent to the broken clips either
        assert client.predict("bob", api_name="/start")[0] == ""
    finally:
        app.close()
        app.annotation_store.close()
    with AnnotationStore(run / "annotations.sqlite") as store:
        errors = {c["clip_id"]: c["error"] for c in store.clips() if c["error"]}
    assert set(errors) == {"00000_0", "00000_1", "00001_0"}


def test_clip_server_refuses_paths_outside_the_generations_folder(tmp_path):
    run = tmp_path / "run"
    make_generations(run / "generations", num_captions=1, clips_per_caption=1)
    config = AnnotateConfig(run_dir=str(run))
    with AnnotationStore(config.layout().annotations) as store:
        server = ClipServer(config.layout().generations, store, config.ratings_per_clip)
        inside = server.clip_path({"clip_id": "x", "file_name": "clips/00000_0.wav"})
        assert inside.is_file()
        with pytest.raises(AudioError, match="resolves outside"):
            server.clip_path({"clip_id": "x", "file_name": "../annotations.sqlite"})
        with pytest.raises(AudioError, match="resolves outside"):
            server.clip_path({"clip_id": "x", "file_name": "/etc/passwd"})


def test_users_file_spectrogram_and_config_checks(tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("# campaign logins\nalice:s3cret\nbob: pa:ss\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="plain-text password"):
        assert read_users_file(users) == {"alice": "s3cret", "bob": " pa:ss"}
    users.write_text("alice\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match="users.txt: line 1 must be 'name:password'"):
        read_users_file(users)
    image = spectrogram_image(np.sin(np.arange(16000) * 0.3).astype(np.float32), 16000)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.std() > 0  # something was drawn
    assert spectrogram_image(np.zeros(100, np.float32), 16000).shape[2] == 3  # very short clips too
    with pytest.raises(AnnotationError, match="ratings_per_clip"):
        AnnotateConfig(ratings_per_clip=0)
    with pytest.raises(AnnotationError, match="metadata.jsonl: not found"):
        annotate(AnnotateConfig(run_dir=str(tmp_path / "empty")))


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)")
def test_keyboard_shortcuts_rate_in_a_browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    run = tmp_path / "run"
    make_generations(run / "generations", num_captions=1, clips_per_caption=3)
    config = AnnotateConfig(run_dir=str(run), ratings_per_clip=1, server_port=free_port())
    app = annotate(config, prevent_thread_lock=True)
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=flags)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{config.server_port}/")
            # by id: the page's first text field is not always the name box while Gradio renders
            page.locator("#baton-annotator textarea, #baton-annotator input").first.fill("kim")
            page.locator("#baton-start").click()
            clip_box = page.locator("#baton-clip-id textarea, #baton-clip-id input").first
            sync_api.expect(clip_box).to_have_value("00000_0", timeout=20000)
            page.wait_for_selector("#baton-audio audio[src]", state="attached", timeout=20000)
            page.locator("body").click(position={"x": 5, "y": 5})
            page.keyboard.press("a")
            sync_api.expect(clip_box).to_have_value("00000_1", timeout=20000)
            page.keyboard.press("n")
            sync_api.expect(clip_box).to_have_value("00000_2", timeout=20000)
            page.keyboard.press("s")
            sync_api.expect(clip_box).to_have_value("", timeout=20000)
            browser.close()
    finally:
        app.close()
        app.annotation_store.close()
    with AnnotationStore(run / "annotations.sqlite") as store:
        assert [(r["clip_id"], r["label"]) for r in store.ratings()] == [("00000_0", 1), ("00000_1", 0), ("00000_2", -2)]


@pytest.mark.slow
def test_logins_from_users_file_name_the_annotator(tmp_path):
    run = tmp_path / "run"
    make_generations(run / "generations", num_captions=1, clips_per_caption=1)
    users = tmp_path / "users.txt"
    users.write_text("alice:wonderland\n", encoding="utf-8")
    config = AnnotateConfig(run_dir=str(run), users_file=str(users), server_port=free_port())
    app = annotate(config, prevent_thread_lock=True)
    try:
        with pytest.raises(Exception):
            gradio_client.Client(f"http://127.0.0.1:{config.server_port}/", auth=("alice", "wrong"), verbose=False)
        client = gradio_client.Client(f"http://127.0.0.1:{config.server_port}/", auth=("alice", "wonderland"), verbose=False)
        clip_id, *_ = client.predict("mallory", api_name="/start")  # a typed name cannot override the login
        client.predict("mallory", clip_id, api_name="/aligned")
    finally:
        app.close()
        app.annotation_store.close()
    with AnnotationStore(run / "annotations.sqlite") as store:
        assert [r["annotator"] for r in store.ratings()] == ["alice"]
