"""The evaluation report writer: every file written, and what is read back equals what went in."""

import json
import re

import numpy as np
import pytest

from baton_trainer.evaluation import FAD_DEFINITION, FD_DEFINITION, load_test_captions, write_report
from baton_trainer.evaluation.report import ReportInputError

METRICS = {
    "base": {"clap_score": 0.3591, "fd": 21.3456, "kl": 1.6123, "is": 7.0512, "is_std": 0.3121},
    "aligned": {"clap_score": 0.4187, "fd": 19.8765, "kl": 1.5234, "is": 7.4321, "is_std": 0.2222},
}


def _inputs():
    rng = np.random.default_rng(0)
    per_caption = [
        {"caption_id": i, "caption": f"caption {i} | with a pipe", "task": ["integrity", "temporal"][i % 2],
         "base": float(rng.uniform(0.2, 0.4)), "aligned": float(rng.uniform(0.25, 0.45))}
        for i in range(12)
    ]  # fmt: skip
    t = np.arange(16000) / 16000
    spectrograms = {
        "a dog barks then a car passes": {"base": (rng.normal(size=16000) * 0.1, 16000), "aligned": (np.sin(2e3 * t), 16000)},
        "rain on a roof": {"base": (rng.normal(size=16000) * 0.1, 16000), "aligned": rng.normal(size=(64, 50))},
    }
    return per_caption, spectrograms


def _table_rows(markdown: str) -> dict[str, list[str]]:
    section = markdown.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| metric"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_report_writes_every_file_and_reads_back(tmp_path):
    per_caption, spectrograms = _inputs()
    skipped = {"fad": "VGGish checkpoint vggish-10086976.pth not given (--vggish_checkpoint)"}
    written = write_report(tmp_path / "eval", METRICS, per_caption, spectrograms, skipped=skipped, info={"task": "temporal"})
    names = {"report.md", "metrics.json", "per_caption.jsonl", "metrics.png", "clap_per_caption.png", "spectrograms.png"}
    assert set(written) == names
    for name in names:
        path = tmp_path / "eval" / name
        assert path.is_file() and path.stat().st_size > 0
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "eval").iterdir() if p.name.endswith(".tmp")]  # no temp files left

    report = (tmp_path / "eval" / "report.md").read_text(encoding="utf-8")
    rows = _table_rows(report)
    assert float(rows["CLAP score (x100)"][0]) == pytest.approx(100 * METRICS["base"]["clap_score"], abs=0.005)
    assert float(rows["CLAP score (x100)"][1]) == pytest.approx(100 * METRICS["aligned"]["clap_score"], abs=0.005)
    assert float(rows["CLAP score (x100)"][2]) == pytest.approx(100 * (0.4187 - 0.3591), abs=0.005)
    for label, key in (("FD (PANNs)", "fd"), ("KL (PANNs, softmax)", "kl")):
        for column, model in enumerate(("base", "aligned")):
            assert float(rows[label][column]) == pytest.approx(METRICS[model][key], abs=5e-5)
    is_base, is_std = re.match(r"([\d.]+) ± ([\d.]+)", rows["IS (PANNs)"][0]).groups()
    assert (float(is_base), float(is_std)) == (pytest.approx(7.0512, abs=5e-5), pytest.approx(0.3121, abs=5e-5))
    assert rows["FD (PANNs)"][-1] == "↓" and rows["CLAP score (x100)"][-1] == "↑"
    # FAD was skipped: listed with its reason, and its definition is still stated.
    assert "FAD (VGGish)" not in rows
    assert "## Skipped metrics" in report and skipped["fad"] in report
    assert FAD_DEFINITION in report and FD_DEFINITION in report
    assert "![Spectrograms](spectrograms.png)" in report

    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert saved["metrics"] == METRICS and saved["models"] == ["base", "aligned"]
    assert saved["skipped"] == skipped and saved["info"] == {"task": "temporal"}
    assert saved["definitions"]["fad"] == FAD_DEFINITION and "torch" in saved["versions"]
    lines = (tmp_path / "eval" / "per_caption.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == per_caption


def test_report_without_optional_parts_and_with_non_finite_values(tmp_path):
    metrics = {"base": {"clap_score": 0.3, "oracle_accuracy": 0.5, "fd": float("nan")}, "aligned": {"clap_score": 0.35, "oracle_accuracy": 0.75}}
    written = write_report(tmp_path, metrics, None, None)
    assert set(written) == {"report.md", "metrics.json", "metrics.png"}
    rows = _table_rows((tmp_path / "report.md").read_text(encoding="utf-8"))
    assert rows["oracle_accuracy"][:3] == ["0.5000", "0.7500", "+0.2500"]
    assert rows["FD (PANNs)"][:3] == ["—", "—", "—"]
    saved = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))  # strict JSON: NaN became null
    assert saved["metrics"]["base"]["fd"] is None


def test_report_refuses_bad_inputs_by_name(tmp_path):
    with pytest.raises(ReportInputError, match=r"metrics\['base'\]\['fd'\]"):
        write_report(tmp_path, {"base": {"fd": "high"}}, None, None)
    with pytest.raises(ReportInputError, match="spectrograms"):
        write_report(tmp_path, {"base": {"fd": 1.0}}, None, {"cap": {"base": "not audio"}})


def test_paper_test_captions_are_shipped():
    integrity, temporal = load_test_captions("integrity"), load_test_captions("temporal")
    assert (len(integrity), len(temporal)) == (148, 165)
    both = load_test_captions()
    assert both == integrity + temporal
    assert [row["caption_id"] for row in both] == list(range(313))
    assert integrity[0] == {
        "caption_id": 0,
        "caption": "A machine is making clicking sound as people talk in the background",
        "task": "integrity",
        "reference": "7fmOlUlwoNg_20.wav",
    }
    assert all(row["caption"] and row["reference"].endswith(".wav") for row in both)
    with pytest.raises(ValueError, match="unknown task 'music'"):
        load_test_captions("music")


def test_metric_bars_carry_each_models_interval():
    from matplotlib.container import BarContainer

    from baton_trainer.evaluation.report import metric_bars_figure

    def whiskers(ax):
        errorbar = next(c for c in ax.containers if isinstance(c, BarContainer)).errorbar
        return None if errorbar is None else [(seg[0][1], seg[1][1]) for seg in errorbar.lines[2][0].get_segments()]

    metrics = {"base": {"temporal_accuracy": 0.3, "fd": 0.1}, "aligned": {"temporal_accuracy": 0.6, "fd": 0.2}}
    intervals = {
        "base": {"temporal_accuracy": {"lo": 0.25, "hi": 0.36}, "fd": {"lo": 0.12, "hi": 0.2}},  # FD's interval may miss its estimate
        "aligned": {"temporal_accuracy": {"lo": 0.52, "hi": 0.7}},
    }
    fig = metric_bars_figure(metrics, ["temporal_accuracy", "fd"], intervals)
    accuracy_panel, fd_panel = fig.axes
    np.testing.assert_allclose(whiskers(accuracy_panel), [(25.0, 36.0), (52.0, 70.0)])  # one segment per bar; accuracies in %
    np.testing.assert_allclose(whiskers(fd_panel), [(0.1, 0.2), (0.2, 0.2)])  # clipped at the estimate; no interval, no whisker
    assert whiskers(metric_bars_figure(metrics, ["temporal_accuracy"]).axes[0]) is None


def test_spectrograms_share_one_colour_scale_and_have_time_and_frequency_axes():
    from baton_trainer.evaluation.report import spectrograms_figure

    rate = 16000
    t = np.arange(rate) / rate
    quiet = (0.01 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    loud = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    fig = spectrograms_figure({"a tone": {"base": (quiet, rate), "aligned": (loud, rate)}, "another": {"base": (loud, rate), "aligned": (quiet, rate)}})
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 4
    limits = {ax.images[0].get_clim() for ax in panels}
    assert len(limits) == 1  # one scale: the quiet clip looks quieter
    vmin, vmax = limits.pop()
    assert vmax - vmin == pytest.approx(80.0, abs=1e-6)
    assert panels[0].images[0].get_array().mean() < panels[1].images[0].get_array().mean() - 10  # the quiet tone is darker
    assert panels[0].get_xlabel() == "time (s)" and panels[0].get_ylabel() == "frequency (kHz)"
    ticks = [float(label.get_text()) for label in panels[0].get_yticklabels()]
    assert ticks[0] < 0.1 and 7.0 < ticks[-1] <= 8.0  # 0 Hz to Nyquist, in kHz
    assert any(ax.get_ylabel() == "dB" for ax in fig.axes)  # the colour bar
