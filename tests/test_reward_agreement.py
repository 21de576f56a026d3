"""Agreement of a reward with yes/no labels (evaluation.reward_agreement), the reward bench's measure."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from baton_trainer.evaluation.reward_agreement import auc, best_threshold, reward_agreement, spearman


def test_auc_is_sklearns_with_ties_and_nan_for_one_class():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=300)
    scores = np.round(labels * 0.3 + rng.normal(size=300), 1)  # rounded: many ties
    assert auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert auc([0.1, 0.2, 0.9], [0, 0, 1]) == 1.0 and auc([0.9, 0.2, 0.1], [0, 0, 1]) == 0.0
    assert np.isnan(auc([0.1, 0.2], [1, 1]))
    assert np.isnan(spearman([0.5, 0.5, 0.5], [0, 1, 1]))


def test_the_threshold_comes_from_validation_and_sits_between_scores():
    assert best_threshold([0.1, 0.2, 0.6, 0.7], [0, 0, 1, 1]) == pytest.approx(0.4)
    assert best_threshold([0.1, 0.2], [1, 1]) < 0.1  # all aligned: everything above the threshold
    # Validation says 0.4; on the test clips 0.35 is a negative above it: 3 of 4 right, not 4 of 4.
    scores = [0.1, 0.2, 0.6, 0.7, 0.05, 0.35, 0.65, 0.9]
    labels = [0, 0, 1, 1, 0, 0, 1, 1]
    validation = [True] * 4 + [False] * 4
    result = reward_agreement(scores, labels, caption_ids=list(range(8)), validation=validation, resamples=50)
    assert result["threshold"] == pytest.approx(0.4) and result["accuracy"] == 1.0
    result = reward_agreement([*scores[:5], 0.45, *scores[6:]], labels, caption_ids=list(range(8)), validation=validation, resamples=50)
    assert result["accuracy"] == 0.75 and result["auc"] == 1.0 and result["clips"] == 4 and result["positives"] == 2


def test_intervals_cover_chance_for_noise_and_exclude_it_for_an_informative_reward():
    rng = np.random.default_rng(1)
    captions = np.repeat(np.arange(100), 4)
    labels = rng.integers(0, 2, size=400)
    validation = captions < 40
    # A 95 % interval misses chance one draw in twenty: over 30 noise rewards it must cover it often
    # (at least 24 times; a fair interval fails that with probability under 1e-3).
    covered = 0
    for _ in range(30):
        noise = reward_agreement(rng.normal(size=400), labels, captions, validation, resamples=200)
        covered += noise["auc_lo"] < 0.5 < noise["auc_hi"]
    assert covered >= 24
    informative = reward_agreement(labels + rng.normal(size=400), labels, captions, validation, resamples=300)
    assert informative["auc_lo"] > 0.65 and informative["accuracy_lo"] > 0.55 and informative["captions"] == 60
    for result in (noise, informative):
        for name in ("auc", "accuracy", "spearman"):
            assert result[f"{name}_lo"] <= result[name] <= result[f"{name}_hi"]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="1 scores are NaN"):
        reward_agreement([0.1, np.nan], [0, 1], [0, 1], [True, False])
    with pytest.raises(ValueError, match="validation split must hold some clips and leave some"):
        reward_agreement([0.1, 0.2], [0, 1], [0, 1], [True, True])
    with pytest.raises(ValueError, match="2 scores, 3 labels"):
        reward_agreement([0.1, 0.2], [0, 1, 1], [0, 1], [True, False])
