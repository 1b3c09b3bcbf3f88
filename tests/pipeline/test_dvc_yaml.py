"""dvc.yaml stays honest: each stage's code deps are exactly the ``ultraseg`` modules its script imports.

The imports are read from the source (every ``import`` statement, in functions too, and the package ``__init__``
files that run on the way), so a module that a stage starts or stops importing fails here until dvc.yaml follows.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

SRC = REPO_ROOT / "src"
DVC = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
STAGES = list(DVC["stages"])


def module_file(name: str) -> Path | None:
    """The file of module ``ultraseg...`` (a package's ``__init__.py``), or None when ``name`` is not a module."""
    path = SRC.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def imported_modules(path: Path) -> set[str]:
    """The ``ultraseg`` modules that the file at ``path`` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == "ultraseg" and module_file(name)}


def has_code(path: Path) -> bool:
    """False for a file holding only a docstring: it cannot change what a stage does."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def code_deps(script: Path) -> set[str]:
    """Repo-relative paths of every ``ultraseg`` source file that running ``script`` executes."""
    todo, seen = list(imported_modules(script)), set()
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for k in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            prefix = ".".join(parts[:k])
            if prefix not in seen:
                seen.add(prefix)
                todo.extend(imported_modules(module_file(prefix)))
    files = {module_file(name) for name in seen}
    return {str(f.relative_to(REPO_ROOT)) for f in files if has_code(f)}


def covered(dep: str, path: str) -> bool:
    return path == dep or path.startswith(dep.rstrip("/") + "/")


def stage_script(stage: str) -> str:
    """The script a stage runs: ``stages/<stage>.py``, or the one its command names (``deploy_accurate`` runs
    ``stages/deploy.py --profile accurate``), always one of the stage directory's."""
    cmd = DVC["stages"][stage]["cmd"].split()
    assert cmd[0] == "python" and cmd[1].startswith("stages/"), f"{stage}: cmd should be python stages/<script>.py"
    assert len(cmd) == 2 or cmd[1] != f"stages/{stage}.py", f"{stage}: a stage of its own script takes no arguments"
    return cmd[1]


@pytest.mark.parametrize("stage", STAGES)
def test_stage_code_deps_match_its_imports(stage):
    script = stage_script(stage)
    deps = [d for d in DVC["stages"][stage]["deps"] if isinstance(d, str)]
    assert script in deps
    code = [d for d in deps if d.startswith("src/")]
    needed = code_deps(REPO_ROOT / script)
    missing = sorted(p for p in needed if not any(covered(d, p) for d in code))
    stale = sorted(d for d in code if not any(covered(d, p) for p in needed))
    assert missing == [], f"{stage}: dvc.yaml misses modules the stage imports"
    assert stale == [], f"{stage}: dvc.yaml lists modules the stage no longer imports"


def test_every_stage_script_is_in_dvc_yaml():
    """Each script is the stage of its own name; other stages only run one of them with other arguments."""
    scripts = {p.stem for p in (REPO_ROOT / "stages").glob("*.py")}
    assert scripts <= set(STAGES)
    assert {stage_script(s) for s in STAGES} == {f"stages/{name}.py" for name in scripts}


def test_stages_are_listed_in_the_order_they_run():
    """A stage comes after every stage whose outputs it reads."""
    position = {name: k for k, name in enumerate(STAGES)}
    writer = {}
    for name, stage in DVC["stages"].items():
        for out in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            writer[next(iter(out)) if isinstance(out, dict) else out] = name
    for name, stage in DVC["stages"].items():
        for dep in stage["deps"]:
            if dep in writer:
                assert position[writer[dep]] < position[name], f"{name} reads {dep} before {writer[dep]} writes it"


def test_readme_layout_names_every_module():
    """README's layout section is where a newcomer looks first: every library module and package is in it."""
    readme = (REPO_ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):].split("```")[1]
    package = SRC / "ultraseg"
    names = {f"{p.parent.name}/" if p.parent.name in ("models", "pipeline", "report", "viewer") else str(p.relative_to(package))
             for p in package.rglob("*.py") if p.name != "__init__.py"}
    assert sorted(n for n in names if n not in layout) == []
