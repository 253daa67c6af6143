import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_images
from usam_ray.cli import app
from usam_ray.data.shards import read_column

runner = CliRunner()


def test_help_lists_every_command_with_text():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("embed", "eval", "models", "config", "samples", "toy"):
        assert command in result.output
    sub = runner.invoke(app, ["models", "--help"])
    assert "tiny" in sub.output and "list" in sub.output
    assert "points_per_side" not in result.output  # --help is a command list, fields live in config show


def test_importing_the_cli_imports_neither_torch_nor_ray():
    code = "import sys, usam_ray.cli; print(json.dumps(['torch' in sys.modules, 'ray' in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [False, False]


def test_config_show_applies_overrides_and_schema_has_descriptions():
    result = runner.invoke(app, ["config", "show", "--set", "sam.points_per_side=16"])
    assert result.exit_code == 0 and "points_per_side: 16" in result.output
    schema = json.loads(runner.invoke(app, ["config", "show", "--schema"]).output)
    assert "description" in schema["$defs"]["SamConfig"]["properties"]["points_per_side"]
    bad = runner.invoke(app, ["config", "show", "--set", "sam.points_per_side=-1"])
    assert bad.exit_code == 2 and "points_per_side" in bad.output


def test_models_list_shows_where_weights_are(zoo):
    result = runner.invoke(app, ["models", "list", "--models", str(zoo)])
    assert result.exit_code == 0
    line = next(l for l in result.output.splitlines() if l.startswith("sam:tiny"))
    assert str(zoo / "sam_tiny.pth") in line
    assert "(not found)" in next(l for l in result.output.splitlines() if l.startswith("sam:vit_h"))


def test_embed_errors_are_one_line_and_exit_2(tmp_path, zoo):
    result = runner.invoke(app, ["embed", "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "r"),
                                 "--models", str(zoo)])
    assert result.exit_code == 2 and "does not exist" in result.output and "Traceback" not in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["embed", "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "r"),
                                 "--models", str(zoo)])
    assert result.exit_code == 2 and "holds no images" in result.output
    write_images(tmp_path / "one", 1, bad=False)
    result = runner.invoke(app, ["embed", "--images", str(tmp_path / "one"), "--out", str(tmp_path / "r"),
                                 "--models", str(tmp_path / "one")])
    assert result.exit_code == 2 and "no SAM checkpoint found" in result.output


def test_embed_in_process(tmp_path, zoo, ray_session):
    files = write_images(tmp_path / "imgs", 3)
    result = runner.invoke(app, ["embed", "-i", str(tmp_path / "imgs"), "-o", str(tmp_path / "run"),
                                 "--models", str(zoo), "--set", "sam.points_per_side=3"])
    assert result.exit_code == 0, result.output
    assert "embedded 6 images, 4 errors" in result.output
    assert "images/s" in result.output  # the progress display
    assert sorted(read_column(tmp_path / "run" / "embed", "image_id")) == sorted(files["ok"])


@pytest.mark.slow
def test_readme_main_job_as_a_subprocess(tmp_path, ray_session):
    """`usam-ray models tiny ZOO && usam-ray embed --images DIR --out RUN --models ZOO`, as written."""
    exe = shutil.which("usam-ray") or str(Path(sys.executable).parent / "usam-ray")
    files = write_images(tmp_path / "imgs", 4, bad=False)
    subprocess.run([exe, "models", "tiny", str(tmp_path / "zoo")], check=True, capture_output=True)
    done = subprocess.run([exe, "embed", "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "run"),
                           "--models", str(tmp_path / "zoo")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "embedded 4 images, 0 errors" in done.stdout
    assert sorted(read_column(tmp_path / "run" / "embed", "image_id")) == sorted(files["ok"])
    assert json.loads((tmp_path / "run" / "run.json").read_text())["stages"]["embed"]["status"] == "complete"


def test_run_refuses_bad_class_lists(tmp_path):
    cfg = tmp_path / "run.yaml"
    for classes, fragment in (('"dog, , cat"', "empty"), ('"dog, dog"', "twice")):
        cfg.write_text(f"out: {tmp_path / 'r'}\nclasses: {classes}\nimages: {tmp_path}\n")
        result = runner.invoke(app, ["run", str(cfg)])
        assert result.exit_code == 2 and fragment in result.output and "Traceback" not in result.output


def test_label_options_that_need_fmbseg_are_refused_in_one_line(tmp_path):
    for extra, fragment in ((["--refined"], "--refined applies to --method fmbseg only"),
                            (["--method", "fmbseg", "--base-out", str(tmp_path / "b")], "--base-out applies to"),
                            (["--base-out", str(tmp_path / "b")], "--base-out applies to")):
        result = runner.invoke(app, ["label", "--images", str(tmp_path), "--head", str(tmp_path), "--out",
                                     str(tmp_path / "o"), *extra])
        assert result.exit_code == 2 and fragment in result.output and "Traceback" not in result.output, result.output


def _main(args, capsys) -> tuple[int, str]:
    """The console entry point (usage errors as one line), its exit code and stderr."""
    from usam_ray.cli import main

    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err + captured.out


@pytest.mark.parametrize("args, fragment", [
    (["demo", "--per-class", "-5"], "--per-class: Input should be greater than or equal to 1 (got -5)"),
    (["demo", "--scenes", "0"], "--scenes: Input should be greater than or equal to 1 (got 0)"),
    (["demo", "--scenes", "many"], "Invalid value for '--scenes'"),
    (["demo", "--set", "runtime.batch_sise=4"], "unknown setting 'runtime.batch_sise'; did you mean runtime.batch_size"),
    (["embed", "--set", "sam.point_per_side=4"], "did you mean sam.points_per_side"),
    (["embed", "--images", "x"], "embed needs --out"),
    (["eval", "--labels", "x"], "eval needs --gt"),
    (["synth", "--out", "x"], "Missing option '--classes'"),
    (["toy", "scenes", "x", "--n", "0"], "Invalid value for '--n'"),
    (["label", "--head", "h", "--out", "o", "--format", "pdf"], "--format: Input should be 'coco-polygons'"),
    (["pseudo", "--images", "x", "--out", "o"], "pseudo needs --classes"),
    (["pseudo", "--images", "x", "--out", "o", "--classes", "cat,,dog"], "class list 'cat,,dog' has an empty name"),
    (["pseudo", "--images", "x", "--out", "o", "--classes", "cat", "--set", "fmbseg.crops_per_side=9"],
     "fmbseg.crops_per_side: Input should be less than or equal to 8 (got 9)"),
])
def test_bad_arguments_are_one_line_naming_the_option_before_any_work(args, fragment, capsys, tmp_path):
    code, err = _main(args + (["--out", str(tmp_path / "d")] if args[0] == "demo" else []), capsys)
    assert code == 2 and fragment in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not (tmp_path / "d").exists()  # refused before any work


def test_demo_refuses_a_run_folder_with_other_scenes(tmp_path, capsys):
    scenes = tmp_path / "toy-scenes"
    scenes.mkdir(parents=True)
    (scenes / "scenes.json").write_text('{"n": 60, "seed": 777}')
    code, err = _main(["demo", "--out", str(tmp_path), "--scenes", "100"], capsys)
    assert code == 2 and "holds 60 scenes" in err and "--scenes 60" in err and len(err.strip().splitlines()) == 1


def test_help_marks_required_options_and_keeps_brackets(capsys):
    result = runner.invoke(app, ["eval", "--help"])
    assert "voc:ROOT[@split]" in result.output and "[required, here or in --config]" in result.output
    label = runner.invoke(app, ["label", "--help"]).output
    assert "<bool>" not in label and "--overlays " in label
    synth = runner.invoke(app, ["synth", "--help"]).output
    assert "--classes TEXT" in synth and "[required]" in synth and "--per-class N" in synth
    code, out = _main(["--version"], capsys)
    assert code == 0 and out.strip().startswith("usam-ray 0.")


@pytest.mark.parametrize("kind", ["embed", "label", "train", "eval", "synth", "run", "demo"])
def test_config_show_knows_every_command(kind):
    result = runner.invoke(app, ["config", "show", kind])
    assert result.exit_code == 0 and result.output.startswith(f"# usam-ray {kind} configuration")
    import yaml

    assert isinstance(yaml.safe_load(result.output), dict)
    schema = json.loads(runner.invoke(app, ["config", "show", kind, "--schema"]).output)
    assert schema["properties"]


def test_config_show_reads_run_configs_and_their_overrides():
    result = runner.invoke(app, ["config", "show", "-c", "configs/voc.yaml", "--set", "label.score_threshold=0.6"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# usam-ray run configuration") and "score_threshold: 0.6" in result.output
    bad = runner.invoke(app, ["config", "show", "run", "-c", "configs/voc.yaml", "--set", "label.score=0.6"])
    assert bad.exit_code == 2 and "did you mean label.score_threshold" in bad.output
