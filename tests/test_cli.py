import dataclasses
import subprocess
import sys

import pytest

from baton_trainer.__main__ import STAGES, main
from baton_trainer.config import ConfigError, parse_config


@dataclasses.dataclass
class Inner:
    epochs: int = 2


@dataclasses.dataclass
class Example:
    name: str = "x"
    rate: float = 0.1
    flag: bool = False
    items: list[str] = dataclasses.field(default_factory=list)
    inner: Inner = dataclasses.field(default_factory=Inner)
    maybe: int | None = None


def test_yaml_then_cli_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("name: from-yaml\nrate: 0.5\ninner:\n  epochs: 7\n")
    cfg = parse_config(Example, ["--config", str(cfg_file), "--rate", "2e-5", "--flag", "--inner.epochs=9", "--items", "a,b", "--maybe", "none"])
    assert cfg == Example(name="from-yaml", rate=2e-5, flag=True, items=["a", "b"], inner=Inner(epochs=9), maybe=None)


def test_a_mapping_on_the_command_line_changes_only_the_keys_it_names(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("name: from-yaml\ninner:\n  epochs: 7\n")
    assert parse_config(Example, ["--config", str(cfg_file), "--inner", "{}"]).inner == Inner(epochs=7)
    assert parse_config(Example, ["--config", str(cfg_file), "--inner", '{"epochs": 3}']).inner == Inner(epochs=3)
    # the run stage's stage sections are plain mappings: the file's other keys stay
    from baton_trainer.__main__ import CONFIG_DIR
    from baton_trainer.stages.run import RunConfig

    run = parse_config(RunConfig, ["--evaluate", '{"sampler": "unipc", "num_inference_steps": 15}'], default_file=CONFIG_DIR / "toy.yaml")
    assert run.evaluate["clips_per_caption"] == 10 and run.evaluate["sampler"] == "unipc" and run.evaluate["num_inference_steps"] == 15
    with pytest.raises(ConfigError, match="inner.bogus"):
        parse_config(Example, ["--config", str(cfg_file), "--inner", '{"bogus": 1}'])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rte", "1"], "unknown config key 'rte'"),
        (["--rate", "fast"], "config key 'rate' must be a number, got 'fast'"),
        (["--inner.epochs", "1.5"], "config key 'inner.epochs' must be an integer"),
        (["--config", "/nonexistent.yaml"], "config file not found: /nonexistent.yaml"),
        (["--inner.bogus", "1"], "unknown config key 'inner.bogus'"),
    ],
)
def test_config_errors_name_the_key(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_config(Example, argv)


def test_none_turns_a_data_source_off_from_the_command_line_and_yaml(tmp_path):
    """The documented ablations (`--reward_dataset none`, `--feedback_dataset none`, `--aligned
    none`) switch the source off; they must not fall back to the default path."""
    from baton_trainer.stages.evaluate import EvaluateConfig
    from baton_trainer.stages.finetune import FinetuneConfig
    from baton_trainer.stages.run import RunConfig

    (tmp_path / "reward_labeled").mkdir()  # the default reward data exists
    human_only = parse_config(FinetuneConfig, ["--run_dir", str(tmp_path), "--reward_dataset", "none"])
    assert human_only.feedback_sources() == (str(tmp_path / "feedback"), None)
    assert parse_config(FinetuneConfig, ["--run_dir", str(tmp_path), "--feedback_dataset", "None"]).feedback_sources() == (
        None,
        str(tmp_path / "reward_labeled"),
    )
    assert parse_config(FinetuneConfig, ["--run_dir", str(tmp_path)]).feedback_sources() == (str(tmp_path / "feedback"), str(tmp_path / "reward_labeled"))
    config_file = tmp_path / "c.yaml"
    config_file.write_text("reward_dataset: none\n")
    assert parse_config(FinetuneConfig, ["--config", str(config_file), "--run_dir", str(tmp_path)]).feedback_sources()[1] is None
    assert parse_config(EvaluateConfig, ["--aligned", "none"]).aligned == "none"
    run = parse_config(RunConfig, ["--run_dir", str(tmp_path), "--finetune.reward_dataset", "none"])
    assert run.stage_configs()["finetune"].feedback_sources()[1] is None


def test_help_lists_every_stage(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for stage in ("prompts", "generate", "annotate", "reward", "label", "finetune", "evaluate", "run", "push"):
        assert f"  {stage}" in out


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_has_a_typed_config_and_help(stage, capsys):
    assert main([stage, "--help"]) == 0
    assert "--run_dir" in capsys.readouterr().out or stage in ("import-baton", "convert-tango", "push", "users")  # stages outside a run folder


def test_cli_errors_are_one_line_and_nonzero(tmp_path):
    result = subprocess.run([sys.executable, "-m", "baton_trainer", "finetune", "--learning_rate", "abc"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: config key 'learning_rate' must be a number, got 'abc'"
    result = subprocess.run([sys.executable, "-m", "baton_trainer", "nosuchstage"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown stage 'nosuchstage'" in result.stderr


def test_renamed_finetune_keys_still_work_with_a_deprecation_warning(tmp_path):
    """`beta` meant three things; its old names keep working for one release, from the CLI, a
    YAML file and a run config's nested section, and never silently beside the new name."""
    from baton_trainer.stages.finetune import FinetuneConfig
    from baton_trainer.stages.run import RunConfig

    with pytest.warns(FutureWarning, match="'beta' is deprecated: use 'pretrain_weight'"):
        cfg = parse_config(FinetuneConfig, ["--beta", "0.25", "--beta_dpo", "20", "--beta_kto", "100"])
    assert (cfg.pretrain_weight, cfg.dpo_beta, cfg.kto_beta) == (0.25, 20.0, 100.0)
    (tmp_path / "run.yaml").write_text("finetune:\n  beta: 0.1\n")
    with pytest.warns(FutureWarning, match="'finetune.beta' is deprecated: use 'finetune.pretrain_weight'"):
        finetune = parse_config(RunConfig, ["--config", str(tmp_path / "run.yaml"), "--finetune.beta_kto", "7"]).stage_configs()["finetune"]
    assert (finetune.pretrain_weight, finetune.kto_beta) == (0.1, 7.0)
    with pytest.raises(ConfigError, match="'beta' and 'pretrain_weight' are the same setting"):
        parse_config(FinetuneConfig, ["--beta", "0.25", "--pretrain_weight", "0.5"])
    assert parse_config(FinetuneConfig, ["--pretrain_weight", "0.3"]).pretrain_weight == 0.3


def test_an_unknown_objective_is_refused_with_the_known_ones():
    from baton_trainer.objectives import OBJECTIVES
    from baton_trainer.stages.finetune import FinetuneConfig

    with pytest.raises(ValueError, match="objective") as error:
        parse_config(FinetuneConfig, ["--objective", "ppo"])
    assert all(name in str(error.value) for name in OBJECTIVES)


def test_a_single_cpu_process_under_accelerate_launch_gets_the_cores_back(tmp_path, monkeypatch):
    """`accelerate launch` without --cpu gives its processes OMP_NUM_THREADS=1; a lone CPU process
    gets one thread per usable physical core back. Launched otherwise, it keeps what it was given."""
    import os
    import shutil

    import psutil
    import torch

    from baton_trainer.runtime import use_the_cores_accelerate_launch_took

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = min(usable, psutil.cpu_count(logical=False) or usable)
    script = tmp_path / "threads.py"
    script.write_text(
        "import os, torch\nfrom baton_trainer.runtime import use_the_cores_accelerate_launch_took as f\n"
        "print('OMP', os.environ.get('OMP_NUM_THREADS'), 'SET', f(), 'THREADS', torch.get_num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS" and not k.startswith("ACCELERATE")}
    launched = subprocess.run([shutil.which("accelerate"), "launch", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-2000:]
    line = next(x for x in launched.stdout.splitlines() if x.startswith("OMP"))
    assert line == (f"OMP 1 SET {cores} THREADS {cores}" if cores > 1 else "OMP 1 SET None THREADS 1")
    plain = subprocess.run([sys.executable, str(script)], env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert plain.stdout.strip() == "OMP 1 SET None THREADS 1"  # not launched by accelerate: the user's setting stands
    before = torch.get_num_threads()
    for name, value in {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "False", "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    assert use_the_cores_accelerate_launch_took() is None and torch.get_num_threads() == before  # several processes share the cores
