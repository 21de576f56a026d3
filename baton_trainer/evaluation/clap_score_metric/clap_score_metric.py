"""CLAP score as a Hugging Face `evaluate` metric that loads from this folder, offline:

    import evaluate
    from baton_trainer.evaluation.clap_score_metric import METRIC_PATH

    clap = evaluate.load(METRIC_PATH)   # a local path: nothing is fetched from the Hub
    clap.compute(predictions=[waveform, ...], references=["a dog barks", ...],
                 sample_rate=16000, model="laion/clap-htsat-unfused")

A thin wrapper: the score itself is `baton_trainer.evaluation.clap_score` (the library works
without `evaluate`, which is an optional extra and no longer actively developed).
"""

import datasets
import evaluate
import numpy as np

from baton_trainer.evaluation.metrics import clap_score

_DESCRIPTION = """\
CLAP score: the cosine similarity between L2-normalised CLAP embeddings of a caption and of the
audio clip generated for it, averaged over pairs (BATON, TANGO and AudioLDM tables print it x100).
Audio is resampled to 48 kHz and cut deterministically to its first 10 s before CLAP sees it.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: list of mono waveforms (lists or arrays of floats), one per caption.
    references: list of captions (str).
    sample_rate: sample rate of the waveforms in Hz (default 16000).
    model: a CLAP model folder or Hub id, a `transformers.ClapModel`, or a
        `baton_trainer.clap.ClapEmbedder` (default "laion/clap-htsat-unfused", LAION 630k-audioset-best).
Returns:
    clap_score: mean cosine similarity in [-1, 1].
    clap_score_x100: the same x100, as papers print it.
    per_pair: the cosine of each caption/clip pair, in input order.
"""

_CITATION = """\
@inproceedings{liao2024baton,
  title={BATON: Aligning Text-to-Audio Model Using Human Preference Feedback},
  author={Liao, Huan and Han, Haonan and Yang, Kai and Du, Tianjiao and Yang, Rui and Xu, Qinmei and Xu, Zunnan and Liu, Jingquan and Lu, Jiasheng and Li, Xiu},
  booktitle={IJCAI},
  year={2024}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClapScoreMetric(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, sample_rate=16000, model="laion/clap-htsat-unfused"):
        mean, per_pair = clap_score(list(references), [np.asarray(p, dtype=np.float32) for p in predictions], int(sample_rate), model=model)
        return {"clap_score": mean, "clap_score_x100": 100.0 * mean, "per_pair": per_pair.tolist()}
