"""The accelerate configs the package ships (`baton_trainer/configs/accelerate/`): each parses with
accelerate's own config reader and builds accelerate's own FSDP or DeepSpeed plugin. accelerate
runs FSDP and DeepSpeed on GPUs only (on CPU it falls back to DDP), so running them is left to
`benchmarks/gpu/run.sh`; docs/scale.md names each config."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

import baton_trainer

CONFIGS = sorted((Path(baton_trainer.__file__).parent / "configs" / "accelerate").glob("*.yaml"))
DOCS = Path(__file__).parents[1] / "docs" / "scale.md"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_a_shipped_config_parses_and_builds_accelerates_plugin(path):
    config = load_config_from_file(str(path))
    assert config.num_processes >= 1 and str(config.mixed_precision) in ("no", "fp16", "bf16")
    if config.distributed_type == DistributedType.FSDP:
        fsdp = dict(config.fsdp_config)
        plugin = FullyShardedDataParallelPlugin(fsdp_version=fsdp.pop("fsdp_version"), **{k.removeprefix("fsdp_"): v for k, v in fsdp.items()})
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True  # full shard
    if config.distributed_type == DistributedType.DEEPSPEED:
        plugin = DeepSpeedPlugin(**config.deepspeed_config)
        assert plugin.zero_stage in (2, 3)
        # the export and checkpoints gather the whole denoiser, which ZeRO-3 allows only with this flag
        assert plugin.zero_stage == 2 or plugin.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]


def test_the_shipped_configs_cover_ddp_fsdp_and_both_zero_stages_and_the_docs_name_each():
    kinds = set()
    for path in CONFIGS:
        config = load_config_from_file(str(path))
        kinds.add(f"zero{config.deepspeed_config['zero_stage']}" if config.distributed_type == DistributedType.DEEPSPEED else str(config.distributed_type))
        assert path.name in DOCS.read_text(encoding="utf-8"), f"docs/scale.md does not name {path.name}"
    assert {"MULTI_GPU", "FSDP", "zero2", "zero3", "MULTI_CPU"} <= {k.removeprefix("DistributedType.") for k in kinds}
