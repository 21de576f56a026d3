"""The folder of the `evaluate` CLAP score metric: `evaluate.load(METRIC_PATH)`."""

from pathlib import Path

METRIC_PATH = str(Path(__file__).resolve().parent)
