import json
import math
from pathlib import Path

import pytest
from helpers import preference_rows, save_preference, training_data

from baton_trainer.audio import AudioError, load_audio, save_wav
from baton_trainer.data import (
    PreferenceDataError,
    build_dataset,
    load_preference_dataset,
    mix_feedback,
    validate_preference_dataset,
)
from baton_trainer.stages.import_baton import ImportBatonConfig, import_baton_release

RELEASE = Path(__file__).resolve().parents[2] / "shared" / "baton_release"


def test_round_trip_through_save_to_disk_and_parquet(tmp_path):
    folder = save_preference(tmp_path / "ds", n=6)
    ds = load_preference_dataset(folder)
    assert len(ds) == 6 and ds.features["audio"].decode is False
    ds.to_parquet(str(tmp_path / "pq" / "train.parquet"))
    again = load_preference_dataset(tmp_path / "pq")
    assert again["caption"] == ds["caption"] and again["reward"] == ds["reward"]
    wav, sr = load_audio(again[0]["audio"])
    assert sr == 16000 and wav.shape == (5120,)


def test_audio_folder_with_metadata(tmp_path):
    rows = []
    for i in range(3):
        save_wav(tmp_path / "clips" / f"{i}.wav", [0.1, -0.1] * 800, 16000)
        rows.append({"file_name": f"clips/{i}.wav", "caption": f"beep {i}", "feedback": 1, "reward": 1.0, "source": "human", "task": "integrity"})
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ds = load_preference_dataset(tmp_path)
    assert ds["caption"] == ["beep 0", "beep 1", "beep 2"] and ds["caption_id"] == [0, 1, 2]


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("reward", math.nan, "row 2, column 'reward'"),
        ("reward", 1.5, "row 2, column 'reward': 1.5 is outside"),
        ("caption", "   ", "row 2, column 'caption': empty caption"),
        ("feedback", 3, "row 2, column 'feedback'"),
        ("task", "order", "row 2, column 'task'"),
    ],
)
def test_bad_rows_are_named(column, value, message):
    rows = preference_rows(4)
    rows[column][2] = value
    with pytest.raises(PreferenceDataError, match=message.replace("(", r"\(")):
        validate_preference_dataset(build_dataset(rows))


def test_missing_column_is_named(tmp_path):
    ds = build_dataset(preference_rows(3)).remove_columns("reward")
    ds.save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(PreferenceDataError, match="missing column 'reward'"):
        load_preference_dataset(tmp_path / "ds")


def test_unicode_captions_are_fine():
    rows = preference_rows(2)
    rows["caption"] = ["Café: un chien aboie 🐕", "犬が吠える、そして鳥が鳴く"]
    assert len(validate_preference_dataset(build_dataset(rows))) == 2


def test_unreadable_audio_names_the_row(tmp_path):
    from baton_trainer.stages.finetune import FinetuneConfig
    from baton_trainer.testing import save_tiny_tango
    from baton_trainer.trainer import DiffusionTrainer

    rows = preference_rows(4)
    rows["audio"][1] = {"bytes": b"definitely not a wav file", "path": "broken.wav"}
    build_dataset(rows).save_to_disk(str(tmp_path / "fb"))
    save_tiny_tango(tmp_path / "model")
    config = FinetuneConfig(run_dir=str(tmp_path), model=str(tmp_path / "model"), feedback_dataset=str(tmp_path / "fb"), report_to="none", max_train_steps=1)
    trainer = DiffusionTrainer(config)
    with pytest.raises(AudioError, match=r"fb: row 1, column 'audio': unreadable audio"):  # the dataset's row, not the shuffled one
        training_data(trainer)


def test_mix_feedback_is_one_to_one():
    human = build_dataset(preference_rows(6))
    rows = preference_rows(20, seed=5)
    rows["source"] = ["reward_model"] * 20
    rows["feedback"] = [-1] * 20
    rewarded = build_dataset(rows)
    mixed = mix_feedback(human, rewarded, ratio=1.0, seed=0)
    assert mixed["source"].count("human") == 6 and mixed["source"].count("reward_model") == 6
    assert mix_feedback(human, rewarded, ratio=2.0, seed=0)["source"].count("reward_model") == 12
    assert mix_feedback(human, None)["source"].count("human") == 6


@pytest.mark.skipif(not RELEASE.is_dir(), reason="the BATON release lives in ../shared/baton_release")
def test_importer_reads_every_release_file(tmp_path):
    files = sorted(RELEASE.glob("*.json"))
    # Audio for three 2-label clips, found by file name under an arbitrary folder layout.
    first = [json.loads(line) for line in (RELEASE / "2label_HA.json").read_text().splitlines()[:3]]
    for row in first:
        save_wav(tmp_path / "audio" / "nested" / Path(row["location"]).name, [0.05] * 1600, 16000)
    out = import_baton_release(ImportBatonConfig(files=[str(f) for f in files], audio_root=str(tmp_path / "audio"), out=str(tmp_path / "ds")))
    report = json.loads((tmp_path / "ds_import_report.json").read_text())
    assert report["files"]["2label_HA.json"] == {"rows": 1094, "imported": 3, "missing_audio": 1091, "duplicates": 0, "kind": "preference"}
    assert report["files"]["grouped_ratings_2label.json"]["duplicates"] == 1094
    assert report["files"]["3label_RA.json"]["rows"] == 1005
    assert report["files"]["test_audiocaps_3label.json"]["kind"] == "pretrain"
    assert any("3label_RA" in line and "2label_Integrity_RD_Audio" in line for line in report["inconsistencies"])
    ds = load_preference_dataset(out)
    assert len(ds) == 3 and set(ds["feedback"]) <= {0, 1} and ds["caption"][0] == first[0]["captions"]


@pytest.mark.skipif(not RELEASE.is_dir(), reason="the BATON release lives in ../shared/baton_release")
def test_importer_keep_and_error_modes(tmp_path):
    kept = import_baton_release(ImportBatonConfig(files=[str(RELEASE / "3label_RA.json")], out=str(tmp_path / "k"), missing_audio="keep"))
    ds = load_preference_dataset(kept, validate=False)
    assert len(ds) == 1005 and set(ds["source"]) == {"reward_model"} and ds["task"][0] == "temporal"
    assert all(0 <= r <= 1 for r in ds["reward"])
    with pytest.raises(PreferenceDataError, match="row 0: audio file"):
        import_baton_release(ImportBatonConfig(files=[str(RELEASE / "2label_HA.json")], out=str(tmp_path / "e"), missing_audio="error"))


def test_bad_audio_inputs():
    with pytest.raises(AudioError, match="not found"):
        load_audio("/nonexistent/clip.wav")
    with pytest.raises(AudioError, match="unreadable"):
        load_audio(b"RIFF....garbage")


# -- pairs and selections for DPO, KTO and reward-ranked fine-tuning --------------------------------


def rated(captions, feedback, rewards=None):
    """A preference dataset of the given captions, ratings (-1 unrated) and rewards."""
    n = len(captions)
    rows = preference_rows(n)
    rows.update(
        caption=list(captions),
        feedback=list(feedback),
        reward=list(rewards or [max(f, 0) for f in feedback]),
        source=["human" if f >= 0 else "reward_model" for f in feedback],
    )
    return build_dataset(rows)


def test_pairs_join_every_aligned_clip_with_every_not_aligned_clip_of_its_caption_only():
    from baton_trainer.data import preference_pairs

    ds = rated(["a dog barks", "a dog barks", "rain", "a dog barks", "rain", "rain", "wind"], [1, 0, 1, 0, 0, 1, 1])
    pairs = preference_pairs(ds, max_pairs_per_caption=10)
    assert sorted(pairs) == sorted([(0, 1), (0, 3), (2, 4), (5, 4)])  # wind has no not-aligned clip: no pair
    captions, feedback = ds["caption"], ds["feedback"]
    assert all(captions[chosen] == captions[rejected] and feedback[chosen] == 1 and feedback[rejected] == 0 for chosen, rejected in pairs)


def test_pairs_are_capped_per_caption_and_reward_labels_rank_the_unrated_clips():
    import random

    from baton_trainer.data import preference_pairs

    rng = random.Random(0)
    captions = [rng.choice(["a", "b", "c"]) + " dog barks" for _ in range(60)]
    feedback = [rng.choice([1, 0]) for _ in range(60)]
    ds = rated(captions, feedback)
    pairs = preference_pairs(ds, max_pairs_per_caption=3, seed=1)
    per_caption = {}
    for chosen, rejected in pairs:
        assert captions[chosen] == captions[rejected] and feedback[chosen] == 1 and feedback[rejected] == 0
        per_caption[captions[chosen]] = per_caption.get(captions[chosen], 0) + 1
    assert per_caption == {c: 3 for c in set(captions)} and pairs == preference_pairs(ds, max_pairs_per_caption=3, seed=1)
    assert pairs != preference_pairs(ds, max_pairs_per_caption=3, seed=2)

    unrated = rated(["rain"] * 3 + ["wind"] * 2, [-1] * 5, [0.9, 0.5, 0.45, 0.8, 0.2])
    assert preference_pairs(unrated) == []
    assert sorted(preference_pairs(unrated, min_reward_gap=0.1)) == [(0, 1), (0, 2), (3, 4)]


def test_reward_ranked_rows_by_threshold_or_top_fraction_per_caption():
    from baton_trainer.data import reward_ranked_rows

    ds = rated(["rain", "rain", "rain", "rain", "wind", "wind"], [-1] * 6, [0.9, 0.2, 0.6, 0.7, 0.1, 0.3])
    assert reward_ranked_rows(ds, threshold=0.5) == [0, 2, 3]
    assert reward_ranked_rows(ds, top_fraction=0.5) == [0, 3, 5]  # the best half of each caption, at least one
    with pytest.raises(ValueError, match="top_fraction"):
        reward_ranked_rows(ds, top_fraction=0.0)


def test_an_audio_alpaca_schema_dataset_loads_as_pairs_and_as_rated_clips(tmp_path):
    import datasets
    from helpers import save_audio_alpaca

    from baton_trainer.data import load_pairwise_dataset, pairwise_to_preference, preference_pairs

    save_audio_alpaca(tmp_path / "alpaca", n_prompts=2, pairs_per_prompt=2)
    pairs = load_pairwise_dataset(tmp_path / "alpaca")
    assert len(pairs) == 4 and pairs["strategy"][0] == "Multiple Inference"
    clips = pairwise_to_preference(pairs)
    validate_preference_dataset(clips)
    assert clips["feedback"] == [1, 0] * 4 and clips["caption_id"] == [0, 0, 0, 0, 1, 1, 1, 1]
    audio = clips.with_format("arrow")["audio"].to_pylist()
    source = pairs.with_format("arrow")["rejected"].to_pylist()
    assert audio[1]["bytes"] == source[0]["bytes"] and audio[7]["bytes"] == source[3]["bytes"]  # rejected clips, in order
    rebuilt = preference_pairs(clips, max_pairs_per_caption=10)
    assert sorted(rebuilt) == [(0, 1), (0, 3), (2, 1), (2, 3), (4, 5), (4, 7), (6, 5), (6, 7)]  # within a prompt, every chosen x every rejected

    datasets.load_from_disk(str(tmp_path / "alpaca")).remove_columns(["rejected"]).save_to_disk(str(tmp_path / "broken"))
    with pytest.raises(PreferenceDataError, match="missing column 'rejected'"):
        load_pairwise_dataset(tmp_path / "broken")
