"""Ratings from people: the durable store (`store`), rater agreement and majority votes
(`agreement`), and the Gradio rating app (`app`, imported on its own since it needs gradio)."""

from .agreement import agreement_statistics, cohen_kappa, fleiss_kappa, majority_vote
from .store import ALIGNED, LABELS, NOT_ALIGNED, SKIP, AnnotationError, AnnotationStore, ClipCompleteError, DuplicateRatingError, UnknownClipError

__all__ = [
    "ALIGNED",
    "LABELS",
    "NOT_ALIGNED",
    "SKIP",
    "AnnotationError",
    "AnnotationStore",
    "ClipCompleteError",
    "DuplicateRatingError",
    "UnknownClipError",
    "agreement_statistics",
    "cohen_kappa",
    "fleiss_kappa",
    "majority_vote",
]
