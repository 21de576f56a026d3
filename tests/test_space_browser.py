"""The comparison Space in a real headless Chromium: type, generate, hear two clips, see two
spectrograms; bad inputs show their message on the page.

Set BATON_SPACE_SCREENSHOT=docs/images/space.png to also copy the screenshot for the docs."""

import os
import shutil
from pathlib import Path

import pytest
from helpers import free_port
from test_space import make_models

from spaces_demo import app as space
from spaces_demo import models as space_models

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"),
]


def test_generate_in_a_browser_and_bad_inputs_show_messages(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    import reward_hub
    from baton_trainer.backends.tango import TangoModel

    models = make_models(tmp_path / "models")
    base = TangoModel.from_pretrained(models["base"])
    aligned = space_models.load_aligned(base, models["full"])
    output_dir = tmp_path / "outputs"
    demo = space.build_demo(base, aligned, reward_hub.load(models["reward"]), output_dir, default_steps=3)
    port = free_port()
    space.launch(demo, output_dir, host="127.0.0.1", port=port, prevent_thread_lock=True)
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/")
            prompt = page.locator("#baton-prompt textarea")

            prompt.fill("a dog barks then birds chirp")
            page.locator("#baton-generate").click()
            # Gradio keeps <audio> hidden and gives it a blob src once a clip arrives
            for player in ("#baton-base-audio", "#baton-aligned-audio"):
                page.wait_for_selector(f"{player} audio[src]", state="attached", timeout=60000)
            for image in ("#baton-base-spectrogram", "#baton-aligned-spectrogram"):
                page.wait_for_selector(f"{image} img[src]", state="visible", timeout=60000)
            sync_api.expect(page.locator("#baton-status")).to_contain_text("Reward: baseline", timeout=20000)
            sources = [page.locator(f"{p} audio[src]").first.get_attribute("src") for p in ("#baton-base-audio", "#baton-aligned-audio")]
            assert all(sources) and sources[0] != sources[1]
            # the players can play: the browser decoded a positive duration
            durations = page.eval_on_selector_all(
                "audio[src]",
                "els => Promise.all(els.map(e => e.readyState >= 1 ? e.duration : new Promise(r => e.addEventListener('loadedmetadata', () => r(e.duration), {once: true}))))",
            )
            assert len(durations) == 2 and all(abs(d - 0.32) < 0.01 for d in durations), durations
            for score in ("#baton-base-score", "#baton-aligned-score"):
                value = float(page.locator(f"{score} input").input_value())
                assert 0.0 <= value <= 1.0
            screenshot = tmp_path / "space.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 10_000
            if os.environ.get("BATON_SPACE_SCREENSHOT"):
                target = Path(os.environ["BATON_SPACE_SCREENSHOT"])
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(screenshot, target)

            # an empty prompt: a message on the page, and the clips shown stay those of the last run
            prompt.fill("")
            page.locator("#baton-generate").click()
            sync_api.expect(page.get_by_text("Enter a prompt", exact=False).first).to_be_visible(timeout=20000)
            assert page.locator("#baton-base-audio audio[src]").first.get_attribute("src") == sources[0]

            # an overlong prompt
            prompt.fill("beep " * 70)
            page.locator("#baton-generate").click()
            sync_api.expect(page.get_by_text("keep it to 300", exact=False).first).to_be_visible(timeout=20000)
            browser.close()
    finally:
        demo.close()
