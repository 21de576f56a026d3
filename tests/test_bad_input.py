"""The catalogue of bad inputs: every stage meets them with one line that names the file, line,
row or key, exits non-zero, and leaves what was already there as it was."""

import json

import pytest

from baton_trainer.__main__ import main
from baton_trainer.testing import save_tiny_clap, save_tiny_tango


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    save_tiny_tango(root / "tango")
    save_tiny_clap(root / "clap")
    # Folders that look like models but hold garbage where the weights should be.
    broken_tango = root / "broken_tango"
    save_tiny_tango(broken_tango)
    next((broken_tango / "unet").glob("*.safetensors")).write_bytes(b"\x00garbage, not safetensors" * 8)
    broken_clap = root / "broken_clap"
    save_tiny_clap(broken_clap)
    (broken_clap / "model.safetensors").write_bytes(b"garbage" * 40)
    (root / "empty").mkdir()
    return root


def run_cli(capsys, argv):
    """(exit code, the error line); progress bars of the libraries are left out, and there is
    exactly one error line, the last thing printed."""
    capsys.readouterr()  # only what the command itself prints
    code = main([str(a) for a in argv])
    lines = [
        line
        for line in capsys.readouterr().err.replace("\r", "\n").splitlines()
        if line.strip() and not any(bar in line for bar in ("Loading weights", "Saving the dataset", "it/s]", "examples/s]"))
    ]
    errors = [line for line in lines if line.startswith("error:")]
    if code:
        assert errors and lines[-1] == errors[-1] and len(errors) == 1 and not any("Traceback" in line for line in lines), lines
    return code, errors[-1] if errors else ""


def write_captions(path, lines):
    path.write_bytes(b"".join(line if isinstance(line, bytes) else (line + "\n").encode() for line in lines))
    return path


GOOD = json.dumps({"caption_id": 0, "caption": "a dog barks then beep", "task": "temporal", "labels": [], "split": "train"})


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            [GOOD, json.dumps({"caption_id": 1, "caption": None, "task": "temporal", "labels": [], "split": "train"})],
            "line 2: 'caption' must be non-empty text, got None",
        ),
        (
            [GOOD, json.dumps({"caption_id": 1, "caption": "   ", "task": "temporal", "labels": [], "split": "train"})],
            "line 2: 'caption' must be non-empty text",
        ),
        (
            [GOOD, b'{"caption_id": 1, "caption": "caf\xe9 sounds", "task": "temporal", "labels": [], "split": "train"}\n'],
            "line 2 is not UTF-8 text (byte 0xe9)",
        ),
        ([GOOD, "{not json"], "line 2 is not valid JSON"),
        ([GOOD, json.dumps([1, 2])], "line 2 is not a JSON object"),
    ],
)
def test_generate_names_the_captions_file_and_line(models, tmp_path, capsys, lines, message):
    captions = write_captions(tmp_path / "captions.jsonl", lines)
    code, err = run_cli(capsys, ["generate", "--run_dir", tmp_path, "--model", models / "tango", "--captions_file", captions, "--num_inference_steps", 1])
    assert code == 1 and str(captions) in err and message in err
    assert not (tmp_path / "generations" / "clips").exists() or not any((tmp_path / "generations" / "clips").iterdir())


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_settings_are_refused_on_the_command_line_and_in_yaml(tmp_path, capsys, value):
    code, err = run_cli(capsys, ["generate", "--run_dir", tmp_path, "--guidance_scale", value])
    assert code == 2 and err == f"error: config key 'guidance_scale' must be a finite number, got '{value}'"
    config = tmp_path / "run.yaml"
    config.write_text(f"run_dir: {tmp_path}\nfinetune:\n  learning_rate: .{value.lstrip('-')}\n")
    code, err = run_cli(capsys, ["run", "--config", config])
    assert code == 2 and "config key 'finetune.learning_rate' must be a finite number" in err
    assert not (tmp_path / "captions.jsonl").exists()


def test_a_nan_guidance_scale_given_in_python_is_refused_before_any_clip(models, tmp_path):
    from baton_trainer.generations import GenerationError
    from baton_trainer.stages.generate import GenerateConfig, generate

    write_captions(tmp_path / "captions.jsonl", [GOOD])
    with pytest.raises(GenerationError, match="'guidance_scale' must be a finite number, got nan"):
        generate(GenerateConfig(run_dir=str(tmp_path), model=str(models / "tango"), guidance_scale=float("nan")))


def test_a_config_file_that_is_not_utf8_names_its_line(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_bytes(b"run_dir: runs/x\n# caf\xe9\n")
    code, err = run_cli(capsys, ["run", "--config", config])
    assert code == 1 and f"{config}: line 2 is not UTF-8" in err


@pytest.mark.parametrize(
    "stage, model_key, folder, message",
    [
        ("generate", "--model", "broken_tango", "broken_tango/unet: cannot be loaded as a UNet2DConditionModel ("),
        (
            "generate",
            "--model",
            "empty",
            "neither a diffusers pipeline folder (model_index.json), a baton-trainer model (baton_model.json), nor an original TANGO checkpoint",
        ),
        ("generate", "--model", "nowhere", "model '{root}/nowhere': not found"),
        ("generate", "--export", "broken_tango", "not a trained export (no baton_export.json)"),
        ("label", "--reward_model", "broken_clap", "broken_clap: cannot be loaded as a BATON reward model"),
        ("reward", "--clap_model", "broken_clap", "broken_clap: cannot be loaded as a CLAP model"),
    ],
)
def test_a_folder_of_garbage_given_as_a_model_is_one_line_naming_it(models, tmp_path, capsys, stage, model_key, folder, message):
    from baton_trainer.testing import save_synthetic_generations, save_synthetic_ratings

    write_captions(tmp_path / "captions.jsonl", [GOOD])
    save_synthetic_generations(tmp_path / "generations", n_captions=3, clips_per_caption=1)  # caption 2 is nobody's
    save_synthetic_ratings(tmp_path / "feedback", n_captions=2, clips_per_caption=2)
    argv = [stage, "--run_dir", tmp_path, model_key, models / folder]
    if stage == "generate":
        argv += ["--num_inference_steps", 1, "--out_dir", tmp_path / "clips_out"]
        if model_key == "--export":
            argv += ["--model", models / "tango"]
    code, err = run_cli(capsys, argv)
    assert code == 1 and message.format(root=models) in err


def test_text_files_people_write_name_their_line_when_not_utf8(tmp_path):
    from baton_trainer.annotation.logins import read_users_file
    from baton_trainer.captions import load_labels
    from baton_trainer.textfiles import TextFileError

    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"dog barking\nrain\n\xff\xfeengine\n")
    with pytest.raises(TextFileError, match=rf"{labels}: line 3 is not UTF-8"):
        load_labels(labels)
    users = tmp_path / "users.txt"
    users.write_bytes(b"alice:secret\nbj\xf6rn:pw\n")
    with pytest.raises(TextFileError, match=rf"{users}: line 2 is not UTF-8"):
        read_users_file(users)
    labels.write_bytes("\ufeffdog barking\nrain\nengine\n".encode())  # a BOM from a Windows editor is fine
    assert load_labels(labels)[0] == "dog barking"


def test_import_baton_with_no_audio_found_keeps_the_last_import(tmp_path, capsys):
    from baton_trainer.data import load_preference_dataset
    from baton_trainer.testing import save_synthetic_ratings

    save_synthetic_ratings(tmp_path / "imported", n_captions=2, clips_per_caption=2)
    release = tmp_path / "2label_HA.json"
    release.write_text(json.dumps([{"dataset": "2label_HA", "location": "x/0001_a dog_0.wav", "captions": "a dog", "feedback": 1}]))
    (tmp_path / "wavs").mkdir()
    code, err = run_cli(capsys, ["import-baton", release, "--audio_root", tmp_path / "wavs", "--out", tmp_path / "imported"])
    assert code == 1 and "no row could be imported" in err and "left as it was" in err
    assert len(load_preference_dataset(tmp_path / "imported")) == 4


def test_label_keeps_a_labelled_set_when_every_clip_is_now_rated(tmp_path, capsys):
    from baton_trainer.data import PREFERENCE_FEATURES, build_dataset, load_preference_dataset
    from baton_trainer.generations import read_generations
    from baton_trainer.testing import save_synthetic_generations, save_synthetic_ratings

    save_synthetic_generations(tmp_path / "generations", n_captions=2, clips_per_caption=2)
    save_synthetic_ratings(tmp_path / "reward_labeled", n_captions=1, clips_per_caption=3)  # an earlier label run's rows
    rows = read_generations(tmp_path / "generations")
    columns = {name: [] for name in PREFERENCE_FEATURES}
    for r in rows:  # now every generated clip has a human rating
        for name, value in (
            ("caption", r["caption"]),
            ("audio", {"bytes": (tmp_path / "generations" / r["file_name"]).read_bytes(), "path": r["file_name"]}),
            ("feedback", 1),
            ("reward", 1.0),
            ("source", "human"),
            ("task", "integrity"),
            ("labels", r["labels"]),
            ("caption_id", r["caption_id"]),
            ("clip_index", r["clip_index"]),
            ("annotator", "a"),
        ):
            columns[name].append(value)
    build_dataset(columns).save_to_disk(str(tmp_path / "feedback"))
    code, err = run_cli(capsys, ["label", "--run_dir", tmp_path])
    assert code == 1 and "every one of the 4 generated clips is rated by people" in err and "the 3 rows already in" in err
    assert len(load_preference_dataset(tmp_path / "reward_labeled")) == 3


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_an_export_applied_to_another_pipeline_class_is_one_line_naming_both(mode, tmp_path, capsys):
    from peft import LoraConfig

    from baton_trainer.testing import save_tiny_stable_audio_3, tiny_stable_audio_3

    flow = tiny_stable_audio_3()
    if mode == "lora":
        flow.add_lora(LoraConfig(r=2, target_modules=list(flow.lora_target_modules)))
    flow.save_trained(tmp_path / "export", mode, base="tiny-stable-audio-3")
    tango = save_tiny_tango(tmp_path / "tango")
    (tmp_path / "captions.txt").write_text("a beep\n")
    args = ["--run_dir", str(tmp_path / "run"), "--model", str(tango), "--export", str(tmp_path / "export"), "--captions_file", str(tmp_path / "captions.txt")]
    capsys.readouterr()  # the tiny models' saving bars
    assert main(["generate", *args]) == 1
    err = capsys.readouterr().err.strip()
    line = err.splitlines()[-1]  # after the loading bars, one error line and no traceback
    assert "Traceback" not in err and line.startswith("error: ValueError")
    assert "StableAudio3Pipeline" in line and "TangoPipeline" in line and "tiny-stable-audio-3" in line
    save_tiny_stable_audio_3(tmp_path / "flow")  # on its own base it loads
    from baton_trainer.backends import load_backend

    load_backend(tmp_path / "flow", export=tmp_path / "export")


def test_a_model_folder_of_a_pipeline_class_without_a_backend_is_one_line_naming_it_and_the_known_ones(tmp_path, capsys):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from baton_trainer.backends import BACKENDS

    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        layers_per_block=1,
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "images")  # a real diffusers folder, of images
    (tmp_path / "captions.txt").write_text("a beep\n")
    code, err = run_cli(capsys, ["generate", "--run_dir", tmp_path / "run", "--model", tmp_path / "images", "--captions_file", tmp_path / "captions.txt"])
    line = err.strip().splitlines()[-1]
    assert code == 1 and "Traceback" not in err and "'DDPMPipeline'" in line and all(name in line for name in BACKENDS)


def test_lora_targets_the_denoiser_lacks_are_one_line_naming_its_class_and_the_backends_own(models, tmp_path, capsys):
    from baton_trainer.testing import save_synthetic_ratings

    save_synthetic_ratings(tmp_path / "feedback", n_captions=2, clips_per_caption=2)
    argv = ["finetune", "--run_dir", tmp_path, "--model", models / "tango", "--use_lora", "true", "--lora_target_modules", '["to_qkv"]']
    code, err = run_cli(capsys, [*argv, "--max_train_steps", 1, "--report_to", "none", "--output_dir", tmp_path / "out"])
    line = err.strip().splitlines()[-1]
    assert code == 1 and "Traceback" not in err
    assert "['to_qkv']" in line and "UNet2DConditionModel" in line and "'to_q', 'to_k', 'to_v', 'to_out.0'" in line
