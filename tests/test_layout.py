"""The shape of the project: one run layout every stage follows, stages as rooms, reward_hub alone."""

import dataclasses
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from baton_trainer.__main__ import STAGES
from baton_trainer.layout import MOVABLE, RunLayout
from baton_trainer.stages.run import RunConfig


def test_moving_an_output_moves_it_for_every_later_stage(tmp_path):
    moved = {
        "generate": ("out_dir", "g"),
        "export": ("out", "fb"),
        "reward": ("output_dir", "rm"),
        "label": ("output_dir", "rl"),
        "finetune": ("output_dir", "al"),
    }
    config = RunConfig(run_dir=str(tmp_path / "run"), **{stage: {key: str(tmp_path / name)} for stage, (key, name) in moved.items()})
    configs = config.stage_configs()
    assert configs["export"].generations_dir == str(tmp_path / "g")
    assert configs["reward"].feedback == str(tmp_path / "fb")
    assert (configs["label"].generations, configs["label"].feedback, configs["label"].reward_model) == (
        str(tmp_path / "g"),
        str(tmp_path / "fb"),
        str(tmp_path / "rm"),
    )
    assert configs["finetune"].feedback_sources() == (str(tmp_path / "fb"), str(tmp_path / "rl"))
    assert configs["evaluate"].layout().reward_model == tmp_path / "rm"
    assert configs["evaluate"].layout().aligned == tmp_path / "al"
    # and each stage's own outputs are where its key put them
    assert configs["reward"].output_dir == str(tmp_path / "rm") and configs["label"].output_dir == str(tmp_path / "rl")


def test_layout_defaults_name_the_documented_run_folder(tmp_path):
    layout = RunLayout.of(tmp_path)
    assert {name: getattr(layout, name).relative_to(tmp_path).as_posix() for name in MOVABLE} == MOVABLE
    assert layout.clap_embeddings == tmp_path / "cache" / "clap_embeddings"
    assert RunLayout.of(tmp_path, cache=tmp_path / "elsewhere").clap_embeddings == tmp_path / "elsewhere" / "clap_embeddings"
    with pytest.raises(ValueError, match="'run_summary' is not a movable run path"):
        RunLayout.of(tmp_path, run_summary="x")


def test_building_a_stage_config_touches_no_file(tmp_path, monkeypatch):
    """Configs are plain data: defaults that depend on what exists are decided when the stage runs."""
    touched = []
    for name in ("exists", "is_file", "is_dir", "mkdir", "stat"):
        original = getattr(pathlib.Path, name)
        monkeypatch.setattr(pathlib.Path, name, lambda self, *a, _n=name, _o=original, **k: touched.append((_n, str(self))) or _o(self, *a, **k))
    monkeypatch.chdir(tmp_path)
    for stage in STAGES.values():
        fields = {f.name for f in dataclasses.fields(stage.config)}
        stage.config(**({"run_dir": str(tmp_path / "nowhere")} if "run_dir" in fields else {}))
    assert touched == []
    assert os.listdir(tmp_path) == []


def test_every_stage_lives_in_its_own_room():
    for name, stage in STAGES.items():
        module = stage.function.__module__
        assert module == f"baton_trainer.stages.{name.replace('-', '_')}", (name, module)
        assert stage.config.__module__ == module


def test_reward_hub_imports_nothing_from_baton_trainer(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        import reward_hub, reward_hub.modeling_baton_reward, reward_hub.pipeline_baton_reward
        bad = sorted(m for m in sys.modules if m == "baton_trainer" or m.startswith("baton_trainer."))
        print("imported:", bad)
        sys.exit(1 if bad else 0)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


@pytest.mark.parametrize(
    "wav",
    [np.zeros((2, 10), np.float32), np.zeros(0, np.float32), np.array([0.0, np.nan], np.float32), np.array([np.inf], np.float32), np.zeros(5, np.float32)],
)
def test_the_remote_code_copy_of_the_waveform_checks_stays_in_step(wav):
    """reward_hub's Hub file must carry its own checks; they refuse exactly what baton_trainer's refuse, in the same words."""
    from baton_trainer.audio import check_waveform
    from reward_hub.modeling_baton_reward import check_audio

    outcomes = []
    for check in (check_waveform, check_audio):
        try:
            outcomes.append(("ok", check(wav, "clip 3").tolist()))
        except ValueError as exc:
            outcomes.append(("refused", str(exc)))
    assert outcomes[0] == outcomes[1]


def test_adding_a_backend_is_its_file_its_line_in_backends_and_its_test_file():
    """A backend's file holds its adapter and its tiny model (`tiny`, which TINY_BACKENDS takes up by
    itself); its test file `tests/test_backend_<module>.py` runs the shared contract
    (`backend_contract.py`) on it; the online, offline-objective, planner and command-line tests take
    every backend of TINY_BACKENDS."""
    from baton_trainer.backends import BACKENDS, TextToAudioBackend, backend_class
    from baton_trainer.testing import TINY_BACKENDS

    tests = pathlib.Path(__file__).parent
    modules = sorted(target.split(":")[0].rsplit(".", 1)[1] for target in BACKENDS.values())
    assert modules == sorted(TINY_BACKENDS)
    for pipeline in BACKENDS:
        assert backend_class(pipeline).tiny.__func__ is not TextToAudioBackend.tiny.__func__, pipeline
    assert sorted(p.stem.removeprefix("test_backend_") for p in tests.glob("test_backend_*.py")) == modules
    for module in modules:
        text = (tests / f"test_backend_{module}.py").read_text(encoding="utf-8")
        assert "from backend_contract import *" in text and f'BACKEND = "{module}"' in text, module
