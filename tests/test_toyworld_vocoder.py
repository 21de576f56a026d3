"""TANGO's mel front end (its own framing, checked against TANGO's code) and the toy's Griffin-Lim vocoder."""

import numpy as np
import pytest
import torch

from baton_trainer.backends.mel import MelFrontEnd
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


def tacotron_log_mel(waveform: np.ndarray, target_frames: int, config: MelConfig) -> np.ndarray:
    """TANGO's preprocessing as its code runs it (audioldm/audio/tools.py read_wav_file, wav_to_fbank,
    _pad_spec; stft.py STFT.transform, TacotronSTFT.mel_spectrogram), written again here:
    normalise, cut or pad to target_frames hops, normalise again, a Fourier basis as a strided conv
    over the reflect-padded clip, |.|, the mel bank, log(clamp(., 1e-5)), frames cut to target_frames."""
    from scipy.signal import get_window
    from transformers.audio_utils import mel_filter_bank

    wav = waveform - waveform.mean()
    wav = 0.5 * wav / (np.abs(wav).max() + 1e-8)
    segment = target_frames * config.hop_length
    wav = wav[:segment] if wav.shape[0] >= segment else np.pad(wav, (0, segment - wav.shape[0]))
    wav = 0.5 * wav / np.abs(wav).max()
    n = config.n_fft
    fourier = np.fft.fft(np.eye(n))[: n // 2 + 1]
    window = np.zeros(n)
    start = (n - config.win_length) // 2
    window[start : start + config.win_length] = get_window("hann", config.win_length, fftbins=True)
    basis = torch.from_numpy(np.vstack([fourier.real, fourier.imag])[:, None, :] * window).float()
    x = torch.nn.functional.pad(torch.from_numpy(wav).float()[None, None, None], (n // 2, n // 2, 0, 0), mode="reflect")[:, 0]
    out = torch.nn.functional.conv1d(x, basis, stride=config.hop_length)
    magnitude = torch.sqrt(out[:, : n // 2 + 1] ** 2 + out[:, n // 2 + 1 :] ** 2)[0].numpy()
    bank = mel_filter_bank(
        num_frequency_bins=n // 2 + 1,
        num_mel_filters=config.n_mels,
        min_frequency=config.fmin,
        max_frequency=config.fmax,
        sampling_rate=config.sample_rate,
        norm="slaney",
        mel_scale="slaney",
    ).T
    fbank = np.log(np.maximum(bank @ magnitude, 1e-5)).T  # (frames, mels)
    if fbank.shape[0] < target_frames:
        fbank = np.pad(fbank, ((0, target_frames - fbank.shape[0]), (0, 0)))
    return fbank[:target_frames]


@pytest.mark.parametrize("seconds, frames", [(2.0, 240), (2.0, 128), (10.24, 1024)])
def test_tango_framing_matches_tangos_own_stft(seconds, frames):
    config = MelConfig()  # TANGO's stft_config.json; framing "tango"
    rng = np.random.default_rng(int(seconds * 100) + frames)
    wav = (0.3 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
    ours = MelFrontEnd(config).waveform_to_mel(torch.from_numpy(wav)[None], frames)[0].numpy()
    theirs = tacotron_log_mel(wav.astype(np.float64), frames, config)
    assert ours.shape == theirs.shape == (frames, 64)
    # 1e-5, plus float32's relative rounding of the log (the quiet frames at a padded tail reach -10).
    np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-5)
    # The project's first framing sits half a hop away: far from TANGO's frames.
    half_hop = MelFrontEnd(MelConfig(framing="half_hop")).waveform_to_mel(torch.from_numpy(wav)[None], frames)[0].numpy()
    assert np.abs(half_hop - theirs).max() > 0.1


def test_griffin_lim_is_deterministic_and_inverts_the_mel():
    front_end, vocoder = LogMelSpectrogram(), GriffinLimVocoder()
    wavs = np.stack([render_sequence(["chirp", "hiss"], seed=s) for s in range(2)])
    log_mel = front_end(torch.from_numpy(wavs))
    audio = vocoder(log_mel.transpose(1, 2))
    assert audio.shape == (2, log_mel.shape[-1] * 160) and audio.dtype == torch.float32
    torch.testing.assert_close(vocoder(log_mel.transpose(1, 2)), audio, rtol=0, atol=0)
    rebuilt = front_end(audio[:, : wavs.shape[1]])
    loud = log_mel > log_mel.amax(dim=(1, 2), keepdim=True) - 4  # where the events are
    error = (rebuilt - log_mel).abs()[loud].mean()
    no_iterations = GriffinLimVocoder(n_iter=0)(log_mel.transpose(1, 2))
    error_before = (front_end(no_iterations[:, : wavs.shape[1]]) - log_mel).abs()[loud].mean()
    assert error < 0.35 and error < error_before


def test_a_clip_vocodes_the_same_alone_and_in_any_batch():
    """Griffin-Lim with momentum 0.99 amplifies FFT rounding, which differs with batch shape and CPU;
    each clip is inverted on its own, so its audio cannot depend on its neighbours, on any CPU."""
    vocoder = GriffinLimVocoder()
    log_mel = LogMelSpectrogram()(torch.from_numpy(np.stack([render_sequence(["chirp", "hiss", "beep"][: 1 + s % 3], seed=s) for s in range(5)])))
    log_mel = log_mel.transpose(1, 2)  # (B, frames, mels), as the pipeline hands it over
    alone = [vocoder(log_mel[i : i + 1])[0] for i in range(5)]
    threads = torch.get_num_threads()
    for cores in (1, 3):  # a batch's clips one after another, and one per thread on 3 threads
        torch.set_num_threads(cores)
        try:
            for batch in (log_mel, log_mel[[3, 1]], log_mel[[4, 0, 2]]):
                together = vocoder(batch)
                for row, clip in zip(together, batch):
                    index = next(i for i in range(5) if torch.equal(log_mel[i], clip))
                    torch.testing.assert_close(row, alone[index], rtol=0, atol=1e-6)
        finally:
            torch.set_num_threads(threads)


def test_vocoder_refuses_wrong_shapes_and_configs():
    with pytest.raises(ValueError, match=r"\(B, frames, 64\)"):
        GriffinLimVocoder()(torch.zeros(1, 10, 80))
    with pytest.raises(ValueError, match="fmax"):
        MelConfig(fmax=9000.0)
    with pytest.raises(ValueError, match="framing"):
        MelConfig(framing="centre")
