"""`recipes/`: one per real checkpoint and mode, each the fine-tune stage's own keys, checked against a
tiny model of the checkpoint's class (the keys parse, the LoRA targets exist in that class, the
planner runs the recipe's settings on it)."""

from pathlib import Path

import pytest

from baton_trainer.config import parse_config
from baton_trainer.planning import WeightlessModel, estimate, lora_parameters
from baton_trainer.stages.finetune import FinetuneConfig
from baton_trainer.stages.plan import PlanConfig
from baton_trainer.testing import (
    save_tiny_ace_step,
    save_tiny_audioldm2,
    save_tiny_longcat_audio_dit,
    save_tiny_stable_audio,
    save_tiny_stable_audio_3,
    save_tiny_tango,
)

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
TINY = {  # recipe name prefix -> a tiny model of the checkpoint's pipeline class
    "tango": save_tiny_tango,
    "audioldm2": save_tiny_audioldm2,
    "stable_audio_open": save_tiny_stable_audio,
    "stable_audio_3": save_tiny_stable_audio_3,
    "longcat": save_tiny_longcat_audio_dit,
    "ace_step": save_tiny_ace_step,
}


def test_every_checkpoint_has_a_lora_and_a_full_recipe():
    names = {p.stem for p in RECIPES}
    for checkpoint in ("tango", "tango2", "audioldm2", "stable_audio_open", "stable_audio_3", "longcat", "ace_step", "audioldm2_large", "stable_audio_3_small"):
        assert {f"{checkpoint}_lora", f"{checkpoint}_full"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_a_recipe_parses_and_its_lora_targets_exist_in_a_tiny_model_of_its_class(recipe, tmp_path):
    config = parse_config(FinetuneConfig, ["--config", str(recipe)])  # the fine-tune stage's own keys
    assert "/" in config.model and not Path(config.model).exists()  # a Hub id
    assert config.mixed_precision == "bf16" and config.use_lora == recipe.stem.endswith("_lora")
    save = next(save for prefix, save in TINY.items() if recipe.stem.startswith(prefix))
    tiny = WeightlessModel(str(save(tmp_path / "tiny")))
    plan = parse_config(PlanConfig, ["--config", str(recipe), "--model", str(tiny.folder), "--train_batch_size", "2"])
    if config.use_lora:  # peft finds each target module in this class (it fails only when none matches, so one at a time)
        for target in config.lora_target_modules:
            single = parse_config(PlanConfig, ["--config", str(recipe), "--model", str(tiny.folder), "--lora_target_modules", target])
            assert lora_parameters(tiny, single) > 0, target
    assert estimate(tiny, plan, "lora" if config.use_lora else "full", "baton").total > 0
