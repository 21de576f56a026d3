"""The `plan` command: the memory a fine-tuning run will need, from the model's configs alone.

    python -m baton_trainer plan --config recipes/tango.yaml
    python -m baton_trainer plan --model cvssp/audioldm2 --train_batch_size 8 --mixed_precision bf16 --gradient_checkpointing

It takes the fine-tune stage's keys (a recipe or a finetune config works as it is) and prints the
parameters of each component and, per process, the memory of full and LoRA fine-tuning with the
config's objective and of an online step, by part (`baton_trainer.planning`). A Hub id downloads
the config and tokenizer files only, no weights.

Imports inside the function keep `python -m baton_trainer --help` fast: the CLI imports every
stage module at start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .finetune import FinetuneConfig


@dataclass
class PlanConfig(FinetuneConfig):
    num_processes: int = field(default=1, metadata={"help": "processes the run is launched on (online rollouts are split between them)"})
    online_objective: Literal["grpo", "awm", "nft"] = field(
        default="grpo", metadata={"help": "the online objective planned when `objective` is an offline one"}
    )
    output: str | None = field(default=None, metadata={"help": "also write the plan as JSON here"})

    def __post_init__(self):
        super().__post_init__()
        if self.num_processes < 1:
            raise ValueError(f"config key 'num_processes' must be >= 1, got {self.num_processes}")


def plan(config: PlanConfig) -> dict:
    from ..atomic import atomic_write_json  # here: see the module docstring
    from ..planning import format_plan
    from ..planning import plan as plan_memory

    result = plan_memory(config, config.num_processes, config.online_objective)
    print(format_plan(result))
    if config.output:
        atomic_write_json(config.output, result)
    return result
