"""TANGO's mel front end and the Griffin-Lim vocoder that inverts it."""

import numpy as np
import pytest
import torch

from baton_trainer.toyworld import GriffinLimVocoder, LogMelSpectrogram, MelConfig, mel_filters, render_sequence


def _reference_log_mel(wav, config):
    """The front end written out with numpy: reflect-padded, Hann-windowed |FFT| -> mel -> log."""
    padded = np.pad(wav, config.n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(config.n_fft) / config.n_fft)  # periodic Hann
    frames = 1 + (len(padded) - config.n_fft) // config.hop_length
    stacked = np.stack([padded[i * config.hop_length : i * config.hop_length + config.n_fft] for i in range(frames)])
    magnitude = np.abs(np.fft.rfft(stacked * window, axis=1)).T
    return np.log(np.maximum(mel_filters(config) @ magnitude, 1e-5))


def test_front_end_matches_tango_definition():
    config = MelConfig()
    wav = render_sequence(["beep", "hum"], seed=0)[:16000]
    log_mel = LogMelSpectrogram(config)(torch.from_numpy(wav)).numpy()
    assert log_mel.shape == (64, 16000 // 160 + 1)
    np.testing.assert_allclose(log_mel, _reference_log_mel(wav.astype(np.float64), config), atol=2e-3)
    silence = LogMelSpectrogram(config)(torch.zeros(2, 1600))
    assert silence.shape == (2, 64, 11) and torch.allclose(silence, torch.full_like(silence, np.log(1e-5)))
    # Slaney filters, 0-8 kHz: none empty, the last ends at 8 kHz.
    bank = mel_filters(config)
    assert bank.shape == (64, 513) and (bank.max(axis=1) > 0).all()


def test_griffin_lim_is_deterministic_and_inverts_the_mel():
    front_end, vocoder = LogMelSpectrogram(), GriffinLimVocoder()
    wavs = np.stack([render_sequence(["chirp", "hiss"], seed=s) for s in range(2)])
    log_mel = front_end(torch.from_numpy(wavs))
    audio = vocoder(log_mel)
    assert audio.shape == (2, log_mel.shape[-1] * 160) and audio.dtype == torch.float32
    torch.testing.assert_close(vocoder(log_mel), audio, rtol=0, atol=0)
    rebuilt = front_end(audio[:, : wavs.shape[1]])
    loud = log_mel > log_mel.amax(dim=(1, 2), keepdim=True) - 4  # where the events are
    error = (rebuilt - log_mel).abs()[loud].mean()
    no_iterations = GriffinLimVocoder(MelConfig(n_iter=0))(log_mel)
    error_before = (front_end(no_iterations[:, : wavs.shape[1]]) - log_mel).abs()[loud].mean()
    assert error < 0.35 and error < error_before


def test_a_clip_vocodes_the_same_alone_and_in_any_batch():
    """Griffin-Lim with momentum 0.99 amplifies FFT rounding, which differs with batch shape and CPU;
    each clip is inverted on its own, so its audio cannot depend on its neighbours, on any CPU."""
    vocoder = GriffinLimVocoder()
    log_mel = LogMelSpectrogram()(torch.from_numpy(np.stack([render_sequence(["chirp", "hiss", "beep"][: 1 + s % 3], seed=s) for s in range(5)])))
    alone = [vocoder(log_mel[i]) for i in range(5)]
    for batch in (log_mel, log_mel[[3, 1]], log_mel[[4, 0, 2]]):
        together = vocoder(batch)
        for row, clip in zip(together, batch):
            index = next(i for i in range(5) if torch.equal(log_mel[i], clip))
            torch.testing.assert_close(row, alone[index], rtol=0, atol=1e-6)


def test_vocoder_refuses_wrong_shapes_and_configs():
    with pytest.raises(ValueError, match=r"\(B, 64, T\)"):
        GriffinLimVocoder()(torch.zeros(1, 80, 10))
    with pytest.raises(ValueError, match="f_max"):
        MelConfig(f_max=9000.0)
