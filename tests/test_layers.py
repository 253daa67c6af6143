"""The layers of DESIGN.md ("Layout and layers"), held by parsing every module's imports (AST,
imports inside functions included): a module imports only from lower layers or its own folder;
siblings of one layer (pipelines/, train/, eval/, toyworld/; models/, heads/, data/, runtime.py, submission.py)
never import each other; methods/ and heads/ never import ray."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "usam_ray"
LAYERS = {"cli": 6, "workflows": 5, "pipelines": 4, "train": 4, "eval": 4, "toyworld": 4, "methods": 3,
          "models": 2, "heads": 2, "data": 2, "runtime": 2, "submission": 2, "config": 1, "types": 1, "masks": 1, "progress": 1}
NO_RAY = ("methods", "heads")


def _unit(module: str) -> str | None:
    """``usam_ray.pipelines.embed`` → ``pipelines``; ``usam_ray`` itself → None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "usam_ray" else None


def _imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in ``path`` (under package ``root``), at any depth."""
    package = list(path.relative_to(root.parent).parts[:-1])  # the package the module is in
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                if node.module:
                    out.append((node.lineno, ".".join(base + [node.module])))
                else:
                    out += [(node.lineno, ".".join(base + [a.name])) for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


def layer_violations(root: Path = PACKAGE) -> list[str]:
    """``file:line: why`` for every import that breaks the layering."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        mine = _unit(".".join(p for p in parts if p != "__init__"))
        if mine is None:
            continue
        assert mine in LAYERS, f"{path}: module {mine!r} has no layer in DESIGN.md (add it to LAYERS)"
        where = path.relative_to(root.parent)
        for line, target in _imports(path, root):
            if target.split(".")[0] == "ray" and mine in NO_RAY:
                bad.append(f"{where}:{line}: {mine}/ imports ray ({target})")
            other = _unit(target)
            if other is None or other == mine:
                continue
            if LAYERS[other] > LAYERS[mine]:
                bad.append(f"{where}:{line}: upward import of {target} (L{LAYERS[other]}) from {mine} (L{LAYERS[mine]})")
            elif LAYERS[other] == LAYERS[mine] and LAYERS[mine] > 1:
                bad.append(f"{where}:{line}: sideways import of {target} from {mine} (both L{LAYERS[mine]})")
    return bad


def test_imports_flow_down_the_layers():
    assert layer_violations() == []


def test_the_checker_finds_upward_sideways_and_ray_imports(tmp_path):
    pkg = tmp_path / "usam_ray"
    for folder in ("methods", "pipelines", "train"):
        (pkg / folder).mkdir(parents=True)
    (pkg / "methods" / "x.py").write_text("def f():\n    import ray\n    from ..pipelines import embed\n")
    (pkg / "pipelines" / "y.py").write_text("from ..train.usam import train_usam\nfrom ..methods import x\n")
    assert layer_violations(pkg) == [
        "usam_ray/methods/x.py:2: methods/ imports ray (ray)",
        "usam_ray/methods/x.py:3: upward import of usam_ray.pipelines (L4) from methods (L3)",
        "usam_ray/pipelines/y.py:1: sideways import of usam_ray.train.usam from pipelines (both L4)",
    ]
