"""The `evaluate` CLAP score module loads from its local folder (offline) and equals clap_score.

`evaluate` is an optional extra for users (`pip install baton-trainer[evaluate]`) and part of the test extra.
"""

import numpy as np
import pytest


def test_evaluate_clap_score_module_loads_from_a_local_path(tmp_path):
    import evaluate

    from baton_trainer.clap import ClapEmbedder
    from baton_trainer.evaluation import clap_score
    from baton_trainer.evaluation.clap_score_metric import METRIC_PATH
    from baton_trainer.testing import save_tiny_clap

    embedder = ClapEmbedder(save_tiny_clap(tmp_path / "clap"))
    t = np.arange(160000) / 16000
    clips = [np.sin(2 * np.pi * 440 * t).astype(np.float32), np.random.default_rng(0).normal(size=160000).astype(np.float32) * 0.1]
    captions = ["a tone rings", "rain falls on a roof"]

    metric = evaluate.load(METRIC_PATH)
    result = metric.compute(predictions=clips, references=captions, sample_rate=16000, model=embedder)
    mean, per_pair = clap_score(captions, clips, 16000, model=embedder)
    assert result["clap_score"] == pytest.approx(mean, abs=1e-6)
    assert result["clap_score_x100"] == pytest.approx(100 * mean, abs=1e-4)
    np.testing.assert_allclose(result["per_pair"], per_pair, atol=1e-6)
