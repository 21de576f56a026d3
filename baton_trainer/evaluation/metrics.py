"""Evaluation metrics of text-to-audio generation, comparable with published numbers.

The conventions follow `audioldm_eval` (used by AudioLDM, TANGO and BATON for their tables):

- **FD**: Fréchet distance between Gaussians fitted to PANNs Cnn14 (16 kHz) 2048-d embeddings of
  generated and reference clips.
- **FAD**: Fréchet distance between Gaussians fitted to VGGish 128-d embeddings of every 0.96 s
  frame of generated and reference clips (VGGish without the PCA/quantisation post-processing
  and without the final ReLU, as `audioldm_eval` configures it).
- **KL**: softmax over PANNs' 527 AudioSet logits, KL(reference || generated) per clip pair
  (pairs matched by name), averaged over pairs.
- **IS**: Inception score on PANNs' softmax probabilities, 10 splits after a seeded shuffle.
- **CLAP score**: mean cosine between L2-normalised CLAP text and audio embeddings; papers print
  it x100 ("35.9%").
- **Loudness**: integrated loudness (ITU-R BS.1770-4, LUFS) and sample peak (dBFS) per clip: a
  louder model biases listeners and level-sensitive metrics, so its level is reported beside them.

Everything here is plain float64 NumPy on arrays the caller computed, so the math is tested
without any model; the embedding models are injected (see `baton_trainer.evaluation.models`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..audio import integrated_loudness
from ..clap import ClapEmbedder
from ..spectrogram import FRAMES_PER_SECOND, log_mel_db


class MetricInputError(ValueError):
    """Inputs a metric cannot use; the message names the argument, row or clip."""


# ---------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------


def _as_float64(array: Any, name: str, ndim: int) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensors
        array = array.detach().cpu().numpy()
    out = np.asarray(array, dtype=np.float64)
    if out.ndim != ndim:
        raise MetricInputError(f"{name}: expected a {ndim}-d array, got shape {out.shape}")
    if not np.all(np.isfinite(out)):
        raise MetricInputError(f"{name}: contains NaN or infinite values")
    return out


def _psd_sqrt(matrix: np.ndarray, name: str) -> np.ndarray:
    """Square root of a symmetric PSD matrix through its eigendecomposition (always real).

    Eigenvalues a little below zero are rounding noise of a singular covariance and are set to
    zero; clearly negative ones mean the input is not a covariance matrix.
    """
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    _check_psd(eigenvalues, name)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def _check_psd(eigenvalues: np.ndarray, name: str) -> None:
    scale = max(float(np.max(np.abs(eigenvalues), initial=0.0)), 1e-300)
    lowest = float(np.min(eigenvalues, initial=0.0))
    if lowest < -1e-6 * scale:
        raise MetricInputError(f"{name} is not positive semi-definite (eigenvalue {lowest:.3g}, largest {scale:.3g}): pass a covariance matrix")


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64:

        ||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2))

    Tr((sigma1 sigma2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix s1 sigma2 s1 with s1 = sigma1^(1/2) (it has the same eigenvalues as
    sigma1 sigma2). That avoids `scipy.linalg.sqrtm`, whose complex results and NaNs on singular
    products made published FAD numbers irreproducible, and it is exact for singular
    covariances (fewer samples than dimensions).
    """
    mu1 = _as_float64(mu1, "mu1", 1)
    mu2 = _as_float64(mu2, "mu2", 1)
    sigma1 = _as_float64(np.atleast_2d(sigma1), "sigma1", 2)
    sigma2 = _as_float64(np.atleast_2d(sigma2), "sigma2", 2)
    dim = mu1.shape[0]
    if mu2.shape != (dim,):
        raise MetricInputError(f"mu1 has {dim} dimensions but mu2 has shape {mu2.shape}")
    for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
        if sigma.shape != (dim, dim):
            raise MetricInputError(f"{name} must have shape ({dim}, {dim}) to match the means, got {sigma.shape}")
        if not np.allclose(sigma, sigma.T, rtol=1e-5, atol=1e-8 * max(1.0, float(np.abs(sigma).max()))):
            raise MetricInputError(f"{name} is not symmetric: pass a covariance matrix")
    sigma1 = (sigma1 + sigma1.T) / 2
    sigma2 = (sigma2 + sigma2.T) / 2

    sqrt_sigma1 = _psd_sqrt(sigma1, "sigma1")
    _check_psd(np.linalg.eigvalsh(sigma2), "sigma2")
    product = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    product = (product + product.T) / 2  # symmetric in exact arithmetic; remove rounding asymmetry
    eigenvalues = np.linalg.eigvalsh(product)
    # Small negative eigenvalues are rounding noise of a singular product (already checked PSD).
    trace_sqrt = float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))

    diff = mu1 - mu2
    distance = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    if not np.isfinite(distance):
        raise ArithmeticError(f"Fréchet distance is not finite ({distance}) for finite inputs")
    # The distance is >= 0 mathematically; a tiny negative value is cancellation in the traces.
    scale = float(np.trace(sigma1) + np.trace(sigma2) + diff @ diff)
    if distance < -1e-6 * max(scale, 1.0):
        raise ArithmeticError(f"Fréchet distance came out negative ({distance:.3g}); inputs are inconsistent")
    return max(distance, 0.0)


def embedding_statistics(embeddings: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (np.cov, rows are samples) of (N, D) embeddings, in float64.

    A list of 2-d arrays (e.g. VGGish frames per clip) is stacked first.
    """
    if isinstance(embeddings, (list, tuple)) and embeddings and np.ndim(embeddings[0]) == 2:
        embeddings = np.concatenate([_as_float64(e, f"embeddings[{i}]", 2) for i, e in enumerate(embeddings)])
    x = _as_float64(embeddings, "embeddings", 2)
    if x.shape[0] < 2:
        raise MetricInputError(f"embeddings: need at least 2 rows for a covariance, got {x.shape[0]}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance_from_embeddings(generated: Any, reference: Any) -> float:
    """Fréchet distance between Gaussians fitted to two embedding sets (N, D) and (M, D)."""
    mu_gen, sigma_gen = embedding_statistics(generated)
    mu_ref, sigma_ref = embedding_statistics(reference)
    return frechet_distance(mu_gen, sigma_gen, mu_ref, sigma_ref)


def within_caption_spread(embeddings: Any, caption_ids: Sequence[Any]) -> float:
    """Diversity: the mean over captions (with at least 2 clips) of the mean pairwise cosine
    distance 1 - cos(e_i, e_j) between the audio embeddings of that caption's clips. Collapse
    (every seed giving the same clip) shows as a drop towards 0."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] != len(caption_ids):
        raise MetricInputError(f"within_caption_spread: {e.shape} embeddings for {len(caption_ids)} caption ids")
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(caption_ids):
        groups.setdefault(str(c), []).append(i)
    spreads = []
    for members in groups.values():
        if len(members) >= 2:
            cos = e[members] @ e[members].T
            spreads.append(float(np.mean(1.0 - cos[np.triu_indices(len(members), 1)])))
    if not spreads:
        raise MetricInputError("within_caption_spread: no caption has 2 or more clips")
    return float(np.mean(spreads))


def log_mel_embeddings(clips: Sequence[Any], sample_rate: int, pool_s: float = 0.1) -> np.ndarray:
    """Clips as vectors for a second diversity measure, independent of CLAP and of any reward
    (`within_caption_spread` of these is `diversity_mel`): each clip's 64-band log-mel image in dB
    within 80 dB of its own peak (`baton_trainer.spectrogram.log_mel_db`, so level does not count),
    averaged over `pool_s` windows, minus its mean, flattened. Clips are cut to the shortest one."""
    images = [log_mel_db(_as_float64(clip, f"clip {i}", 1), sample_rate) for i, clip in enumerate(clips)]
    if not images:
        raise MetricInputError("log_mel_embeddings: no clips")
    pool = max(1, int(round(pool_s * FRAMES_PER_SECOND)))
    frames = min(image.shape[1] for image in images) // pool * pool
    if frames == 0:
        raise MetricInputError(f"log_mel_embeddings: the shortest clip is under {pool_s} s")
    rows = []
    for image in images:
        pooled = image[:, :frames].reshape(image.shape[0], frames // pool, pool).mean(axis=2)
        rows.append((pooled - pooled.mean()).ravel())
    return np.asarray(rows, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Classifier-based metrics
# ---------------------------------------------------------------------------------------------


def softmax(logits: Any, axis: int = -1) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _xlogy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x * log(y) with 0 * log(0) = 0 (as torch.kl_div's target convention)."""
    out = np.zeros(np.broadcast(x, y).shape)
    mask = np.broadcast_to(x != 0, out.shape)
    xb, yb = np.broadcast_to(x, out.shape), np.broadcast_to(y, out.shape)
    out[mask] = xb[mask] * np.log(yb[mask])
    return out


def inception_score(probs: Any, splits: int = 10, seed: int | None = 2020, from_logits: bool = False) -> tuple[float, float]:
    """Inception score of class probabilities (N, C), as `audioldm_eval` computes it.

    Rows are shuffled with `np.random.RandomState(seed).permutation` (seed None: no shuffle),
    cut into `splits` contiguous chunks [i*N//splits, (i+1)*N//splits), and each chunk scores
    exp(mean_x KL(p(y|x) || p(y))) with p(y) the chunk's mean prediction. Returns the mean and
    the (population) standard deviation over chunks. `audioldm_eval` feeds the softmax of
    PANNs' logits: pass `from_logits=True` with logits.
    """
    x = _as_float64(probs, "probs", 2)
    p = softmax(x) if from_logits else x
    if not from_logits:
        if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
            raise MetricInputError("probs: rows must be probability distributions (pass from_logits=True for logits)")
    n = p.shape[0]
    if splits < 1:
        raise MetricInputError(f"splits must be >= 1, got {splits}")
    if n < splits:
        raise MetricInputError(f"inception score with {splits} splits needs at least {splits} clips, got {n}")
    if seed is not None:
        p = p[np.random.RandomState(seed).permutation(n)]
    scores = []
    for i in range(splits):
        chunk = p[i * n // splits : (i + 1) * n // splits]
        marginal = chunk.mean(axis=0, keepdims=True)
        kl = (_xlogy(chunk, chunk) - _xlogy(chunk, marginal)).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


def _pair_by_name(ref: np.ndarray, gen: np.ndarray, ref_names: Sequence[str], gen_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    ref_names, gen_names = [str(n) for n in ref_names], [str(n) for n in gen_names]
    for what, names, rows in (("ref_names", ref_names, ref), ("gen_names", gen_names, gen)):
        if len(names) != rows.shape[0]:
            raise MetricInputError(f"{what} has {len(names)} names for {rows.shape[0]} rows of logits")
        seen: set[str] = set()
        duplicates = sorted({n for n in names if n in seen or seen.add(n)})
        if duplicates:
            raise MetricInputError(f"{what}: duplicate names {duplicates[:5]} (each clip pairs with exactly one)")
    only_ref = sorted(set(ref_names) - set(gen_names))
    only_gen = sorted(set(gen_names) - set(ref_names))
    if only_ref or only_gen:
        raise MetricInputError(
            "kl_divergence pairs clips by name and these do not match: "
            f"reference only {only_ref[:10]}{' ...' if len(only_ref) > 10 else ''}, "
            f"generated only {only_gen[:10]}{' ...' if len(only_gen) > 10 else ''}"
        )
    gen_index = {name: i for i, name in enumerate(gen_names)}
    order = [gen_index[name] for name in ref_names]
    return ref, gen[order], ref_names


def kl_divergence(
    ref_logits: Any,
    gen_logits: Any,
    ref_names: Sequence[str] | None = None,
    gen_names: Sequence[str] | None = None,
    eps: float = 1e-6,
    return_per_pair: bool = False,
) -> float | tuple[float, np.ndarray]:
    """Mean over clip pairs of KL(softmax(reference) || softmax(generated)) on classifier logits.

    This is `audioldm_eval`'s `kullback_leibler_divergence_softmax` (the "KL" of AudioLDM, TANGO
    and BATON tables): PANNs' 527 AudioSet logits, softmax over classes, the reference clip's
    distribution as target, and `eps` (1e-6 there) added to the generated probabilities before
    the log (so identical clips score about -C * eps, down to -5.3e-4 for 527 classes, not 0:
    kept for comparability; pass eps=0 for the plain KL). Pairs: with names, each reference clip is matched to the generated clip of the
    same name (order free; any unmatched or duplicate name is refused and listed); without
    names, rows pair in order. With `return_per_pair`, also returns the per-pair KL values (in
    reference order).
    """
    ref = _as_float64(ref_logits, "ref_logits", 2)
    gen = _as_float64(gen_logits, "gen_logits", 2)
    if (ref_names is None) != (gen_names is None):
        raise MetricInputError("kl_divergence: pass both ref_names and gen_names, or neither")
    if ref.shape[1] != gen.shape[1]:
        raise MetricInputError(f"ref_logits has {ref.shape[1]} classes but gen_logits has {gen.shape[1]}")
    if ref_names is not None:
        ref, gen, _ = _pair_by_name(ref, gen, ref_names, gen_names)  # type: ignore[arg-type]
    elif ref.shape[0] != gen.shape[0]:
        raise MetricInputError(f"ref_logits has {ref.shape[0]} clips but gen_logits has {gen.shape[0]}: pass names to pair them")
    if ref.shape[0] == 0:
        raise MetricInputError("kl_divergence: no clip pairs")
    p_ref, p_gen = softmax(ref), softmax(gen)
    per_pair = (_xlogy(p_ref, p_ref) - _xlogy(p_ref, p_gen + eps)).sum(axis=1)
    mean = float(per_pair.mean())
    return (mean, per_pair) if return_per_pair else mean


# ---------------------------------------------------------------------------------------------
# CLAP score
# ---------------------------------------------------------------------------------------------


def _as_embedder(model: Any):
    if isinstance(model, ClapEmbedder):
        return model
    return ClapEmbedder(model)


def clap_score(
    texts: Sequence[str],
    audios: Sequence[np.ndarray],
    sample_rate: int,
    model: Any = "laion/clap-htsat-unfused",
    audio_embeddings: Any = None,
) -> tuple[float, np.ndarray]:
    """CLAP score: cosine between the L2-normalised CLAP embeddings of each caption and its clip.

    Returns `(mean, per_pair)`; papers print the mean x100 (BATON: "35.9%" is 0.359). `model` is
    a `baton_trainer.clap.ClapEmbedder`, a `ClapModel`, a folder or a Hub id (default LAION's
    `630k-audioset-best`, the checkpoint BATON uses). Audio is resampled to 48 kHz and cropped
    deterministically to 10 s by the embedder, so the score does not depend on CLAP's random
    crop or on the clip's sample rate. `audio_embeddings`: the clips' embeddings by the same model,
    if already computed (they are then not computed again).
    """
    texts = list(texts)
    audios = list(audios)
    if len(texts) != len(audios):
        raise MetricInputError(f"clap_score: {len(texts)} captions but {len(audios)} clips")
    if not texts:
        raise MetricInputError("clap_score: no caption/clip pairs")
    embedder = _as_embedder(model)
    text_emb = np.asarray(embedder.embed_text(texts), dtype=np.float64)
    if audio_embeddings is None:
        audio_embeddings = embedder.embed_audio(audios, sample_rate)
    audio_emb = np.array(audio_embeddings, dtype=np.float64)
    # The embedder normalises already; normalising again in float64 keeps cosines exact.
    text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
    audio_emb /= np.linalg.norm(audio_emb, axis=1, keepdims=True)
    per_pair = np.sum(text_emb * audio_emb, axis=1)
    return float(per_pair.mean()), per_pair


METRIC_LOUDNESS_LUFS = -23.0  # the loudness the level-dependent metrics hear every clip at (EBU R 128's)


def loudness_normalised(clips: Sequence[Any], sample_rate: int, lufs: Sequence[float] | None = None, target: float = METRIC_LOUDNESS_LUFS) -> list[np.ndarray]:
    """Each clip scaled to `target` integrated loudness (ITU-R BS.1770-4; `lufs` is each clip's
    measured loudness, computed when not given), so that embedding metrics compare content, not
    level: a louder model would otherwise move FD and the spreads. Silent clips (NaN or -inf
    loudness) are left as they are. Float32, not clipped: a peak above 1 is kept, as metrics read floats."""
    if lufs is None:
        lufs = loudness_and_peak(clips, sample_rate)[0]
    out = []
    for clip, level in zip(clips, lufs):
        wav = np.asarray(clip, dtype=np.float32)
        out.append(wav * np.float32(10 ** ((target - level) / 20)) if np.isfinite(level) else wav)
    return out


def loudness_and_peak(clips: Sequence[Any], sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Per clip: integrated loudness (LUFS; NaN for a silent clip) and sample peak (dBFS,
    20 log10 max |x|; NaN for digital silence)."""
    import pyloudnorm  # lazy: only loudness needs it

    meter = pyloudnorm.Meter(sample_rate)
    lufs, peaks = [], []
    for i, clip in enumerate(clips):
        wav = _as_float64(clip, f"clip {i}", 1)
        value = integrated_loudness(wav, sample_rate, meter)
        lufs.append(value if np.isfinite(value) else np.nan)
        peak = float(np.abs(wav).max()) if wav.size else 0.0
        peaks.append(20 * np.log10(peak) if peak > 0 else np.nan)
    return np.asarray(lufs), np.asarray(peaks)
