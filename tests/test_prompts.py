import json
import random

import numpy as np
import pytest

from baton_trainer.captions import (
    INTEGRITY_CONJUNCTIONS,
    TEMPORAL_CONJUNCTIONS,
    CaptionError,
    caption_keeps_labels,
    generate_captions,
    load_labels,
    make_caption,
    read_captions,
)
from baton_trainer.config import ConfigError, parse_config
from baton_trainer.stages.prompts import PromptsConfig, build_captions


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_shipped_vocabulary_has_200_distinct_labels():
    labels = load_labels()
    assert len(labels) == 200
    assert len({label.casefold() for label in labels}) == 200
    assert "dog barking" in labels and "man speaking" in labels


def test_counts_per_task_labels_in_caption_and_temporal_order(tmp_path):
    config = PromptsConfig(run_dir=str(tmp_path), num_integrity=120, num_temporal=90, heldout_fraction=0.2, seed=3)
    rows = _read_jsonl(build_captions(config))
    assert [r["caption_id"] for r in rows] == list(range(210))
    assert sum(r["task"] == "integrity" for r in rows) == 120
    assert sum(r["task"] == "temporal" for r in rows) == 90
    for row in rows:
        assert set(row) == {"caption_id", "caption", "task", "labels", "split"}
        assert len(row["labels"]) == (2 if row["task"] == "integrity" else 3)
        text = row["caption"].casefold()
        assert all(label.casefold() in text for label in row["labels"]), row
        if row["task"] == "temporal":
            positions = [text.index(label.casefold()) for label in row["labels"]]
            assert positions == sorted(positions), row
    # held-out draw is per task
    assert sum(r["split"] == "heldout" and r["task"] == "integrity" for r in rows) == 24
    assert sum(r["split"] == "heldout" and r["task"] == "temporal" for r in rows) == 18
    assert read_captions(tmp_path / "captions.jsonl") == rows


def test_paper_default_is_962_captions(tmp_path):
    rows = _read_jsonl(build_captions(PromptsConfig(run_dir=str(tmp_path))))
    assert len(rows) == 962
    # both conjunction lists are used
    assert any(" with " in r["caption"] for r in rows if r["task"] == "integrity")
    assert any("followed by" in r["caption"] for r in rows if r["task"] == "temporal")


def test_same_seed_same_captions_other_seed_other_captions(tmp_path):
    a = build_captions(PromptsConfig(run_dir=str(tmp_path / "a"), num_integrity=50, num_temporal=50, seed=7))
    b = build_captions(PromptsConfig(run_dir=str(tmp_path / "b"), num_integrity=50, num_temporal=50, seed=7))
    c = build_captions(PromptsConfig(run_dir=str(tmp_path / "c"), num_integrity=50, num_temporal=50, seed=8))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_no_repeated_label_group_or_caption():
    labels = ["dog barking", "rain falling", "car horn", "bell ringing", "man speaking"]
    # 5 labels give exactly 10 unordered pairs and 60 ordered triples: ask for all of them
    rows = generate_captions(labels, num_integrity=10, num_temporal=60, seed=0)
    pairs = [frozenset(r["labels"]) for r in rows if r["task"] == "integrity"]
    triples = [tuple(r["labels"]) for r in rows if r["task"] == "temporal"]
    assert len(set(pairs)) == 10 and len(set(triples)) == 60
    assert len({r["caption"].casefold() for r in rows}) == len(rows)
    with pytest.raises(CaptionError, match="only 10 distinct 2-label groups"):
        generate_captions(labels, num_integrity=11, num_temporal=0)


def test_user_labels_file_with_unicode_and_comments(tmp_path):
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("# my sounds\nchien qui aboie\n猫の鳴き声  # cat\n\nklavier spielt\nΒροχή\nChien qui aboie\n", encoding="utf-8")
    assert load_labels(labels_file) == ["chien qui aboie", "猫の鳴き声", "klavier spielt", "Βροχή"]
    out = build_captions(PromptsConfig(run_dir=str(tmp_path / "run"), labels_file=str(labels_file), num_integrity=6, num_temporal=6, heldout_fraction=0))
    rows = read_captions(out)
    assert any("猫の鳴き声" in r["caption"] for r in rows)
    assert "猫の鳴き声" in out.read_text(encoding="utf-8")  # written as UTF-8, not escaped


def test_empty_labels_refused_clearly(tmp_path):
    with pytest.raises(CaptionError, match="label 1 is empty"):
        make_caption(["dog barking", "  "], "integrity")
    with pytest.raises(CaptionError, match="takes 3 labels"):
        make_caption(["a", "b"], "temporal")
    with pytest.raises(CaptionError, match="distinct"):
        make_caption(["a", "A"], "integrity")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(CaptionError, match="empty.txt: needs at least 3"):
        load_labels(empty)
    with pytest.raises(CaptionError, match="labels file not found"):
        load_labels(tmp_path / "missing.txt")


def test_make_caption_takes_rng_seed_or_conjunction():
    labels2, labels3 = ["beep", "whoosh"], ["beep", "whoosh", "chirp"]
    assert make_caption(labels2, "integrity", "with") == "Beep with whoosh"
    assert make_caption(labels2, "integrity", "{1} accompanied by {0}") == "Whoosh accompanied by beep"
    assert make_caption(labels3, "temporal", "followed by") == "Beep, followed by whoosh, followed by chirp"
    assert make_caption(labels3, "temporal") == "Beep, followed by whoosh, followed by chirp"
    drawn = {make_caption(labels3, "temporal", random.Random(i)) for i in range(60)}
    assert len(drawn) > 5
    assert make_caption(labels3, "temporal", np.random.default_rng(1)) == make_caption(labels3, "temporal", np.random.default_rng(1))
    assert make_caption(labels2, "integrity", 5) == make_caption(labels2, "integrity", 5)
    with pytest.raises(CaptionError, match="slot"):
        make_caption(labels3, "temporal", "{0} then {1}")
    with pytest.raises(CaptionError, match="task must be one of"):
        make_caption(labels2, "order", "and")


def test_every_template_keeps_labels_in_order():
    labels2, labels3 = ["alpha", "beta"], ["alpha", "beta", "gamma"]
    for template in INTEGRITY_CONJUNCTIONS:
        assert caption_keeps_labels(make_caption(labels2, "integrity", template), labels2, ordered=True)
    for template in TEMPORAL_CONJUNCTIONS:
        assert caption_keeps_labels(make_caption(labels3, "temporal", template), labels3, ordered=True)
    assert not caption_keeps_labels("Beta, then alpha, then gamma", labels3, ordered=True)
    assert caption_keeps_labels("Beta and alpha", labels2, ordered=False)


def test_changed_captions_not_overwritten_silently(tmp_path):
    build_captions(PromptsConfig(run_dir=str(tmp_path), num_integrity=5, num_temporal=5, seed=0))
    build_captions(PromptsConfig(run_dir=str(tmp_path), num_integrity=5, num_temporal=5, seed=0))  # same file: fine
    with pytest.raises(CaptionError, match="captions.jsonl exists with other captions"):
        build_captions(PromptsConfig(run_dir=str(tmp_path), num_integrity=5, num_temporal=5, seed=1))
    build_captions(PromptsConfig(run_dir=str(tmp_path), num_integrity=5, num_temporal=5, seed=1, overwrite=True))
    assert not list(tmp_path.glob(".*.tmp"))


def test_config_from_cli_and_bad_values():
    config = parse_config(PromptsConfig, ["--num_integrity", "4", "--heldout_fraction", "0.5", "--run_dir", "x"])
    assert config.num_integrity == 4 and config.heldout_fraction == 0.5
    with pytest.raises(ConfigError):
        parse_config(PromptsConfig, ["--num_integrty", "4"])
    with pytest.raises(CaptionError, match="heldout_fraction"):
        PromptsConfig(heldout_fraction=1.5)


def test_rewriter_falls_back_when_a_label_is_dropped(tmp_path):
    """A tiny random GPT-2 (offline) writes nonsense: every caption must fall back to the template."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from baton_trainer.captions import CaptionRewriter

    words = sorted({w for label in load_labels() for w in label.split()} | {"Rewrite", "the", "sound", "Sentence:", "Description:"})
    vocab = {"[UNK]": 0, "[EOS]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]", pad_token="[EOS]")
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=len(vocab), n_positions=128, n_embd=16, n_layer=1, n_head=2, eos_token_id=1, pad_token_id=1)
    )
    folder = tmp_path / "tiny-gpt2"
    model.save_pretrained(folder)
    fast.save_pretrained(folder)

    rewriter = CaptionRewriter(str(folder), device="cpu", max_new_tokens=6)
    template = make_caption(["dog barking", "rain falling", "car horn honking"], "temporal", "then")
    assert rewriter(template, ["dog barking", "rain falling", "car horn honking"], "temporal") == template

    plain = generate_captions(load_labels(), 3, 3, seed=0)
    rewritten = build_captions(
        PromptsConfig(run_dir=str(tmp_path / "run"), num_integrity=3, num_temporal=3, heldout_fraction=0, rewrite_model=str(folder), rewrite_device="cpu")
    )
    assert [r["caption"] for r in read_captions(rewritten)] == [r["caption"] for r in plain]
