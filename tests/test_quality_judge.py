"""The toy quality judge (baton_trainer/evaluation/quality.py), the toy world's stand-in for MOS-Q.

Its validation: clean toy renderings of 16 captions, and the same clips degraded by five types of
damage at three increasing levels each (clicks, white noise, hard clipping, Griffin-Lim
resynthesis of the clip's log-mel with fewer iterations, dropouts). The judge's mean score must
fall strictly from clean through levels 1, 2 and 3 of every type, each step by more than the two
sets' standard errors added, so that the ordering survives FFT and BLAS differences between CPUs.
Also: scores lie in [1, 5], clean clips score about 5, loudness (+-6 dB) barely moves a score, a
reference of clean renderings of the same captions keeps the ordering, and the judge imports
nothing of the reward models or CLAP.
"""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from baton_trainer.evaluation import quality
from baton_trainer.evaluation.quality_validation import degrade
from baton_trainer.toyworld import render_dataset, render_sequence

SR = 16000
CLIPS = 16
LEVELS = quality.VALIDATION_LEVELS
QUALITY_FILE = Path(quality.__file__)


@pytest.fixture(scope="module")
def clean_set() -> dict:
    return render_dataset(CLIPS, seed=7)


@pytest.fixture(scope="module")
def degraded(clean_set) -> dict[str, np.ndarray]:
    """'clean' and '<kind>_<level>' -> clips (CLIPS, samples)."""
    clean = clean_set["audio"]
    sets = {"clean": clean}
    for kind, levels in LEVELS.items():
        for level, setting in enumerate(levels, start=1):
            sets[f"{kind}_{level}"] = degrade(clean, SR, kind, setting, seed=level)
    return sets


@pytest.fixture(scope="module")
def measured(degraded) -> dict[str, dict[str, np.ndarray]]:
    return {key: quality.artifact_measures(clips, SR) for key, clips in degraded.items()}


@pytest.fixture(scope="module")
def scores(measured) -> dict[str, np.ndarray]:
    return {key: quality.score_from_badness(quality.badness(values)) for key, values in measured.items()}


def mean_and_se(values: np.ndarray) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(len(values)))


@pytest.mark.parametrize("kind", list(LEVELS))
def test_mean_score_falls_with_every_level_of_each_degradation(scores, kind):
    chain = ["clean"] + [f"{kind}_{level}" for level in (1, 2, 3)]
    stats = [mean_and_se(scores[key]) for key in chain]
    summary = ", ".join(f"{key} {mean:.2f} +- {se:.2f}" for key, (mean, se) in zip(chain, stats))
    for (upper, upper_se), (lower, lower_se) in zip(stats, stats[1:]):
        assert upper - lower > upper_se + lower_se, summary


def test_clean_renderings_score_about_five(scores):
    clean = scores["clean"]
    assert np.median(clean) > 4.9
    assert np.mean(clean) > 4.8
    assert np.min(clean) > 4.0


def test_each_degradation_shows_in_the_measure_it_targets(measured):
    """Interpretable parts: each type's strongest level lifts its own measure past clean renderings."""
    targets = {"clicks": "transient_rate", "clipping": "clipped_fraction", "noise": "noise_floor_db", "griffin_lim": "frame_buzz", "dropouts": "transient_rate"}
    for kind, name in targets.items():
        clean_level = quality.CALIBRATION[name]["clean"]
        assert np.median(measured[f"{kind}_3"][name]) > clean_level, (kind, name)
        assert np.median(measured[f"{kind}_1"][name]) > np.median(measured["clean"][name]), (kind, name)
    # and nothing else adds clipped flat tops
    for key, values in measured.items():
        if not key.startswith("clipping"):
            assert np.max(values["clipped_fraction"]) < 0.01, key


def test_scores_lie_in_one_to_five_and_unusable_clips_score_one(scores):
    for key, values in scores.items():
        assert np.all((values >= 1.0) & (values <= 5.0)), key
    rng = np.random.default_rng(0)
    square = np.sign(np.sin(2 * np.pi * 440 * np.arange(40960) / SR)).astype(np.float32)
    extremes = np.stack([rng.standard_normal(40960).astype(np.float32), square, np.zeros(40960, np.float32), np.full(40960, np.nan, np.float32)])
    noise, clipped, silence, nan = quality.toy_quality(extremes, SR)
    assert 1.0 <= noise < 2.0 and 1.0 <= clipped < 2.0  # only noise; a clipped-through square wave
    assert silence == 1.0 and nan == 1.0


def test_loudness_barely_moves_the_score(degraded):
    clips = np.concatenate(
        [degraded["clean"][:6], degraded["noise_1"][:3], degraded["clicks_1"][:3], degraded["clipping_1"][:3], degraded["griffin_lim_1"][:3]]
    )
    base = quality.toy_quality(clips, SR)
    for gain_db in (-6.0, 6.0):
        moved = quality.toy_quality(clips * 10 ** (gain_db / 20), SR)
        assert np.max(np.abs(moved - base)) < 0.02, gain_db
    assert np.allclose(quality.toy_quality(clips[0], SR), base[:1])  # one clip, (samples,)


def test_reference_renderings_of_the_same_captions_keep_the_ordering(clean_set, degraded):
    """Against clean renderings of each clip's own events (other seeds), clean still scores about 5
    and every type's strongest level stays far below it."""
    events = [[name for name, _, _ in placed] for placed in clean_set["events"]]
    reference = np.stack([np.stack([render_sequence(names, seed=1000 + 10 * i + r) for r in range(2)]) for i, names in enumerate(events)])
    clean = quality.toy_quality(degraded["clean"], SR, reference=reference)  # two renderings per caption
    assert np.mean(clean) > 4.7
    baseline = quality.reference_baseline(reference[:, 0], SR, CLIPS)  # one rendering per caption
    for kind in LEVELS:
        worst = quality.score_from_badness(quality.badness(quality.artifact_measures(degraded[f"{kind}_3"], SR), baseline))
        assert np.mean(worst) < np.mean(clean) - 1.0, kind
    with pytest.raises(quality.QualityInputError, match="one row per clip"):
        quality.toy_quality(degraded["clean"], SR, reference=reference[:3, 0])


def test_bad_inputs_are_refused():
    with pytest.raises(quality.QualityInputError, match="sample_rate"):
        quality.toy_quality(np.zeros((1, 40960)), 4000)
    with pytest.raises(quality.QualityInputError, match="at least 0.25 s"):
        quality.toy_quality(np.zeros((1, 100)), SR)
    with pytest.raises(quality.QualityInputError, match="shape"):
        quality.toy_quality(np.zeros((1, 2, 40960)), SR)


def test_the_judge_imports_nothing_of_the_rewards_or_clap():
    """Its own imports are NumPy, SciPy and the standard library only, and loaded on its own (no
    package __init__) it scores clips without any reward, CLAP or project module in the process."""
    allowed = {"__future__", "math", "typing", "numpy", "scipy"}
    tree = ast.parse(QUALITY_FILE.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import from .{node.module}"
            imported.add(node.module.split(".")[0])
    assert imported <= allowed, imported - allowed
    code = (
        "import importlib.util, sys, numpy as np\n"
        f"spec = importlib.util.spec_from_file_location('toy_quality_alone', {str(QUALITY_FILE)!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "scores = module.toy_quality(np.random.default_rng(0).standard_normal((2, 16000)) * 0.01, 16000)\n"
        "assert scores.shape == (2,), scores\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('baton_trainer', 'reward_hub', 'torch', 'transformers') or 'clap' in m or 'reward' in m]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
