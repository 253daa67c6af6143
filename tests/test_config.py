import pytest

from usam_ray.config import EmbedConfig, apply_overrides, embed_fingerprint, load_config


def test_defaults_follow_usam():
    cfg = EmbedConfig()
    assert cfg.sam.points_per_side == 10  # d = 100 prompts


def test_every_field_has_a_description():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann)
    walk(EmbedConfig)


def test_overrides_parse_types_and_nest(tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("sam:\n  points_per_side: 4\nruntime:\n  batch_size: 2\n")
    cfg = load_config(EmbedConfig, yml, ["sam.points_per_side=16", "data.extensions=[.png]", "runtime.address=null"])
    assert cfg.sam.points_per_side == 16
    assert cfg.runtime.batch_size == 2
    assert cfg.data.extensions == [".png"]
    assert cfg.runtime.address is None


@pytest.mark.parametrize("bad, fragment", [
    (["sam.points_per_side"], "dotted.key=value"),
    (["sam.nope=3"], "nope"),
    (["sam.points_per_side=0"], "points_per_side"),
    (["sam.points_per_side.x=1"], "points_per_side"),
])
def test_bad_overrides_are_named(bad, fragment):
    with pytest.raises(ValueError, match=fragment):
        load_config(EmbedConfig, None, bad)


def test_missing_yaml_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.yaml"):
        load_config(EmbedConfig, tmp_path / "nothere.yaml")


def test_fingerprint_stable_and_sensitive():
    base = load_config(EmbedConfig, None, ["images=/a", "out=/b"])
    same = load_config(EmbedConfig, None, ["images=/elsewhere", "out=/c", "runtime.batch_size=16",
                                           "runtime.num_actors=3"])
    other = load_config(EmbedConfig, None, ["sam.points_per_side=12"])
    fp = embed_fingerprint(base, "sam:tiny", "abc")
    assert fp == embed_fingerprint(base, "sam:tiny", "abc")
    assert fp == embed_fingerprint(same, "sam:tiny", "abc")  # runtime/source do not change outputs
    assert fp != embed_fingerprint(other, "sam:tiny", "abc")
    assert fp != embed_fingerprint(base, "sam:tiny", "abd")  # other weights
    assert fp != embed_fingerprint(base, "sam:vit_b", "abc")


def test_apply_overrides_creates_sections():
    assert apply_overrides({}, ["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


def test_shipped_configs_load():
    from pathlib import Path

    import yaml

    from usam_ray.config import RunConfig
    from usam_ray.types import Ontology

    files = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert files
    for path in files:
        is_run = "classes" in (yaml.safe_load(path.read_text()) or {})
        cfg = load_config(RunConfig if is_run else EmbedConfig, path)
        if is_run:
            assert len(Ontology.from_names(cfg.classes).classes) in (20, 80, 171)  # VOC, COCO, COCO-Stuff


def test_ci_runs_the_readme_test_command():
    from pathlib import Path
    import subprocess

    root = Path(__file__).parent.parent
    readme = (root / "README.md").read_text()
    block = readme.split("<!-- test-command -->", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0].strip()
    extracted = subprocess.run(
        ["awk", "/<!-- test-command -->/{found=1; next} found && /^```/{if (inblock) exit; inblock=1; next} inblock{print}",
         str(root / "README.md")], capture_output=True, text=True, check=True).stdout.strip()
    assert extracted == block and "pytest" in block
    assert "README.md" in (root / ".ci" / "run").read_text()


def test_precision_is_part_of_the_fingerprint_and_compile_is_not():
    base = load_config(EmbedConfig, None, [])
    fp = embed_fingerprint(base, "sam:tiny", "abc")
    compiled = load_config(EmbedConfig, None, ["sam.compile=true"])
    assert embed_fingerprint(compiled, "sam:tiny", "abc") == fp  # compiling gives the same embeddings
    bf16 = load_config(EmbedConfig, None, ["sam.precision=bf16"])
    assert embed_fingerprint(bf16, "sam:tiny", "abc") != fp  # bf16 masks differ by a few pixels
    with pytest.raises(ValueError, match="precision"):
        load_config(EmbedConfig, None, ["sam.precision=fp8"])
