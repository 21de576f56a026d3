"""Evaluation: metrics comparable with published text-to-audio numbers, and the report writer.

Metrics are plain functions on arrays (`metrics`); the models that produce those arrays (PANNs
Cnn14, VGGish, CLAP) are injected and loaded from local files (`models`, `baton_trainer.clap`).
See docs/evaluation.md for definitions and how the numbers compare with the BATON paper.
"""

from ..weight_files import WeightFileError
from .metrics import (
    MetricInputError,
    clap_score,
    embedding_statistics,
    frechet_distance,
    frechet_distance_from_embeddings,
    inception_score,
    kl_divergence,
    softmax,
)
from .models import (
    PANNS_CNN14_16K_FILE,
    PANNS_CNN14_16K_URL,
    VGGISH_FILE,
    VGGISH_URL,
    Cnn14Config,
    MissingCheckpointError,
    PannsCnn14,
    VGGish,
    VGGishConfig,
)
from .report import FAD_DEFINITION, FD_DEFINITION, METRIC_INFO, write_report
from .suite import EvaluationResult, compute_metrics
from .test_captions import TEST_CAPTION_FILES, TestCaptionError, load_test_captions

__all__ = [
    "FAD_DEFINITION",
    "FD_DEFINITION",
    "METRIC_INFO",
    "PANNS_CNN14_16K_FILE",
    "PANNS_CNN14_16K_URL",
    "TEST_CAPTION_FILES",
    "VGGISH_FILE",
    "VGGISH_URL",
    "WeightFileError",
    "Cnn14Config",
    "MetricInputError",
    "MissingCheckpointError",
    "PannsCnn14",
    "TestCaptionError",
    "VGGish",
    "VGGishConfig",
    "EvaluationResult",
    "clap_score",
    "compute_metrics",
    "embedding_statistics",
    "frechet_distance",
    "frechet_distance_from_embeddings",
    "inception_score",
    "kl_divergence",
    "load_test_captions",
    "softmax",
    "write_report",
]
