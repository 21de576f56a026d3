"""Live human votes as a reward (`human_votes`): the policy's clips go to a live campaign, whole
groups within a budget, voted by the toy oracle annotator or by people through the annotation
store; votes are kept, so a resumed rollout asks nobody twice."""

import threading
import time

import numpy as np
import pytest

import baton_trainer.rewards  # noqa: F401  (registers human_votes)
from baton_trainer.annotation.store import ALIGNED, NOT_ALIGNED, AnnotationStore
from baton_trainer.layout import RunLayout
from baton_trainer.rewards import run_rewards
from baton_trainer.toyworld.oracle import OracleAnnotator
from baton_trainer.toyworld.render import render_sequence
from reward_hub.rewards import REWARDS, Reward, RewardError, build_reward, register_reward

# Three captions' groups of two clips: one clip with the events in order, one without.
GROUPS = {
    "knock then chirp then beep": (["knock", "chirp", "beep"], ["beep", "chirp", "knock"]),
    "hum and hiss": (["hum", "hiss"], ["hum"]),
    "trill then whistle then rumble": (["whistle", "trill", "rumble"], ["trill", "whistle", "rumble"]),
}
CAPTIONS = [caption for caption, clips in GROUPS.items() for _ in clips]
WAVES = [render_sequence(events, seed=i) for i, events in enumerate(e for clips in GROUPS.values() for e in clips)]
LABELS = {
    "knock then chirp then beep": ["knock", "chirp", "beep"],
    "hum and hiss": ["hum", "hiss"],
    "trill then whistle then rumble": ["trill", "whistle", "rumble"],
}


class Quarter(Reward):
    name = "quarter"
    sample_rate = 16_000

    def _score(self, captions, waves):
        return [0.25] * len(waves)


@pytest.fixture(autouse=True)
def quarter():
    register_reward("test_quarter", Quarter)
    yield
    REWARDS.pop("test_quarter")


def oracle_answers(indices):
    tasks = ["temporal" if len(LABELS[CAPTIONS[i]]) == 3 else "integrity" for i in indices]
    return OracleAnnotator().judge_batch([WAVES[i] for i in indices], [LABELS[CAPTIONS[i]] for i in indices], tasks, 16_000)


def test_the_oracle_votes_on_whole_groups_within_the_budget_and_nobody_is_asked_twice(tmp_path):
    votes = build_reward({"name": "human_votes", "folder": str(tmp_path / "live"), "budget": 2, "fallback": "test_quarter"})
    scores = votes.score(CAPTIONS, WAVES, 16_000)
    voted = [i for i, s in enumerate(scores) if s != 0.25]
    groups = sorted({CAPTIONS[i] for i in voted})
    assert len(groups) == 2 and len(voted) == 4  # two whole groups; the third gets the fallback
    np.testing.assert_array_equal(scores[voted], oracle_answers(voted))
    assert sorted(scores[voted].tolist()) == [0.0, 0.0, 1.0, 1.0]  # in each group one clip in order, one not

    store = AnnotationStore(tmp_path / "live" / "votes.sqlite")
    assert len(store.ratings()) == 4
    again = votes.score(CAPTIONS, WAVES, 16_000)  # a resumed rollout: the same draw, the stored votes
    np.testing.assert_array_equal(again, scores)
    assert len(store.ratings()) == 4
    other = votes.score(CAPTIONS[:2], WAVES[:2][::-1], 16_000)  # other clips: voted anew
    assert len(store.ratings()) == 6 and sorted(other.tolist()) == [0.0, 1.0]
    store.close()

    with pytest.raises(RewardError, match=r"the budget covers 1 of this rollout's 3 captions; give a fallback reward"):
        build_reward({"name": "human_votes", "folder": str(tmp_path / "no_fallback"), "budget": 1}).score(CAPTIONS, WAVES, 16_000)


def test_people_vote_through_the_store_and_a_run_waits_for_them(tmp_path):
    folder = tmp_path / "live"
    votes = build_reward({"name": "human_votes", "folder": str(folder), "annotator": "people", "ratings_per_clip": 2, "poll_s": 0.02, "wait_s": 60})

    def two_people():  # each clip gets one aligned and one not-aligned vote, the in-order clip two aligned
        while not (folder / "votes.sqlite").exists():
            time.sleep(0.01)
        time.sleep(0.1)
        store = AnnotationStore(folder / "votes.sqlite")
        for clip in store.clips():
            in_order = clip["clip_index"] == 0  # the first clip of "hum and hiss" has both events
            store.add_rating(clip["clip_id"], "ann", ALIGNED)
            store.add_rating(clip["clip_id"], "bob", ALIGNED if in_order else NOT_ALIGNED)
        store.close()

    rater = threading.Thread(target=two_people)
    rater.start()
    scores = votes.score(CAPTIONS[2:4], WAVES[2:4], 16_000)
    rater.join()
    assert scores.tolist() == [1.0, 0.5]

    impatient = build_reward({"name": "human_votes", "folder": str(tmp_path / "slow"), "annotator": "people", "poll_s": 0.02, "wait_s": 0.2})
    with pytest.raises(RewardError, match=r"2 of 2 clips in .*slow still lack 1 vote\(s\) after 0.2 s; the votes given are kept"):
        impatient.score(CAPTIONS[:2], WAVES[:2], 16_000)


def test_a_run_keeps_its_live_votes_in_the_run_folder(tmp_path):
    layout = RunLayout.of(tmp_path / "run")
    rewards = run_rewards(["human_votes", {"name": "human_votes", "folder": str(tmp_path / "elsewhere"), "budget": 1, "fallback": "test_quarter"}], layout)
    assert [r.folder for r in rewards.rewards] == [str(layout.live_votes), str(tmp_path / "elsewhere")]
    assert layout.live_votes == tmp_path / "run" / "live_votes" and rewards.rewards[1].fallback.name == "quarter"
    # With a budget and no fallback, the clips nobody votes on get the run's reward model.
    with pytest.raises(ValueError, match=r"run.reward_model: cannot be loaded as a BATON reward model \(no such folder"):
        run_rewards([{"name": "human_votes", "budget": 1}], layout)


@pytest.mark.slow
def test_an_online_run_learns_from_live_votes_within_its_budget(tmp_path):
    """awm on a tiny TANGO with human_votes: each rollout's voted group is in the campaign, the
    other clips scored by the fallback, and the rollout rewards say which was which."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from helpers import save_audio_alpaca, save_pretrain, train

    from baton_trainer.stages.finetune import FinetuneConfig
    from baton_trainer.testing import save_tiny_tango
    from baton_trainer.trainer import DiffusionTrainer

    save_audio_alpaca(tmp_path / "alpaca")
    save_pretrain(tmp_path / "pretrain", n=4)
    save_tiny_tango(tmp_path / "tango")
    config = FinetuneConfig(
        run_dir=str(tmp_path / "run"),
        model=str(tmp_path / "tango"),
        pairwise_dataset=str(tmp_path / "alpaca"),
        feedback_dataset="none",
        reward_dataset="none",
        pretrain_dataset=str(tmp_path / "pretrain"),
        output_dir=str(tmp_path / "out"),
        objective="awm",
        rewards=[{"name": "human_votes", "budget": 1, "fallback": "test_quarter"}],
        max_train_steps=2,
        group_size=3,
        rollout_captions=2,
        rollout_steps=4,
        report_to="none",
        use_lora=True,
        lora_rank=4,
        duration_s=0.32,
        learning_rate=1e-2,
    )
    train(DiffusionTrainer(config))
    store = AnnotationStore(tmp_path / "run" / "live_votes" / "votes.sqlite")
    ratings = len(store.ratings())
    store.close()
    rollouts = sorted((tmp_path / "out" / "rollouts").glob("*.rewards.json"))
    voted = [sum(v != 0.25 for v in json.loads(path.read_text())["human_votes"]) for path in rollouts]
    # One caption's clips voted a rollout (all of them: a caption drawn for both groups gives 6), the rest the fallback's 0.25.
    assert len(rollouts) == 2 and all(n in (3, 6) for n in voted) and ratings == sum(voted)
