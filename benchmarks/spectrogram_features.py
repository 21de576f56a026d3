"""Spectrogram features of the clips a run scores: the project's one-FFT-call spectrogram
(`reward_hub.modeling_baton_reward.mel_power_spectrogram`, silent frames skipped) against
transformers' frame-by-frame `spectrogram`, measured in the same run on the same clips.

    python benchmarks/spectrogram_features.py [--clips 64]

Two uses, two kinds of clip:
- CLAP input features (`FastClapFeatureExtractor` vs transformers' `ClapFeatureExtractor`), 48 kHz,
  10 s: toy clips (2.56 s at 16 kHz through `prepare_waveform`, which zero-pads them to CLAP's
  10 s) and full 10 s clips.
- the report's log-mel images and `diversity_mel` (`baton_trainer.spectrogram.log_mel_db`), 16 kHz
  toy clips.

Prints seconds per clip and the speed-up, checks the features agree (max abs difference in dB),
and writes benchmarks/results/spectrogram_features.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from transformers import ClapFeatureExtractor
from transformers.audio_utils import spectrogram, window_function

from baton_trainer.audio import slaney_mel_filters
from baton_trainer.clap import clap_feature_extractor
from baton_trainer.spectrogram import FRAMES_PER_SECOND, N_MELS, log_mel_db
from reward_hub.modeling_baton_reward import fast_clap_features, prepare_waveform

RESULTS = Path(__file__).resolve().parent / "results"


def seconds_per_clip(function, clips) -> tuple[float, list]:
    started = time.perf_counter()
    outputs = [function(clip) for clip in clips]
    return (time.perf_counter() - started) / len(clips), outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    plain = clap_feature_extractor()
    fast = fast_clap_features(plain)
    assert type(plain) is ClapFeatureExtractor
    cases = {
        # zero-padded to 10 s as `prepare_waveform` gives them to the extractor (the reward model, ClapEmbedder)
        "clap_toy_2.56s": [prepare_waveform(rng.normal(0, 0.2, 40_960), 16_000, 480_000) for _ in range(args.clips)],
        "clap_10s": [rng.normal(0, 0.2, 480_000).astype(np.float32) for _ in range(args.clips)],
    }
    rows = {}
    for name, clips in cases.items():
        base, want = seconds_per_clip(lambda c: plain(c, sampling_rate=48_000, return_tensors="np")["input_features"], clips)
        now, got = seconds_per_clip(lambda c: fast(c, sampling_rate=48_000, return_tensors="np")["input_features"], clips)
        rows[name] = {
            "baseline_s_per_clip": base,
            "now_s_per_clip": now,
            "speedup": base / now,
            "max_abs_diff_db": float(max(np.abs(a - b).max() for a, b in zip(got, want))),
        }
    toy = [rng.normal(0, 0.2, int(2.56 * 16_000)) for _ in range(args.clips)]
    bank = slaney_mel_filters(16_000, 1024, N_MELS, 0.0, 8_000).T.astype(np.float64)
    window = window_function(1024, "hann")

    def frame_by_frame(clip):
        return spectrogram(clip, window, frame_length=1024, hop_length=16_000 // FRAMES_PER_SECOND, power=2.0, mel_filters=bank, log_mel="dB", db_range=80.0)

    base, want = seconds_per_clip(frame_by_frame, toy)
    now, got = seconds_per_clip(lambda c: log_mel_db(c, 16_000), toy)
    rows["log_mel_db_toy_16k"] = {
        "baseline_s_per_clip": base,
        "now_s_per_clip": now,
        "speedup": base / now,
        "max_abs_diff_db": float(max(np.abs(a - b).max() for a, b in zip(got, want))),
    }
    for name, row in rows.items():
        print(f"{name:22s} transformers {1000 * row['baseline_s_per_clip']:7.2f} ms/clip   now {1000 * row['now_s_per_clip']:7.2f} ms/clip   "
              f"x{row['speedup']:.1f}   max |diff| {row['max_abs_diff_db']:.1e} dB")  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"machine": {"processor": platform.machine(), "python": platform.python_version()}, "clips": args.clips, "cases": rows}
    (RESULTS / "spectrogram_features.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
