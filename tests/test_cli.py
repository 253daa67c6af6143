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
