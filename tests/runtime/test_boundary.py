"""The boundary between what a deployed model needs and what only training needs is a package boundary.

``ultraseg.runtime`` and ``ultraseg.commands`` run with PyTorch, DVC and the ONNX package made unimportable, and no
module in them imports, at any depth and in any function, PyTorch, DVC or the training code. The static check reads
every import statement, so it also covers branches a run does not take (a DICOM codec path, a server route).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT, speckle_image

PACKAGE = REPO_ROOT / "src" / "ultraseg"
FRAMEWORKS = {"torch", "torchvision", "torch_pruning", "onnx", "onnxscript", "dvc", "dvclive"}
"""Third-party packages that only training and the pipeline load (``onnx`` is the export and quantization side;
the runtime runs files through ``onnxruntime``)."""
LEAVES = {"ultraseg", "ultraseg.params", "ultraseg.errors", "ultraseg.io"}
"""Library modules outside runtime/ that the runtime may import: configuration, errors and atomic writes."""
COMMAND_LIBRARY = {"ultraseg.metrics", "ultraseg.presence", "ultraseg.figures", "ultraseg.data",
                   "ultraseg.data.labelled", "ultraseg.data.busi"}
"""Torch-free library modules that the commands may import besides the runtime: evaluate-folder scores a labelled
folder as the evaluate stage does (metrics, presence, figures) and reads it as the fetch stage does
(data.labelled)."""


def module_file(name: str) -> Path | None:
    path = PACKAGE.parent.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def imports(path: Path) -> tuple[set[str], set[str]]:
    """The ``ultraseg`` modules and the other top-level packages that ``path`` imports anywhere in its body."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    ours = {n for n in names if n.split(".")[0] == "ultraseg" and module_file(n)}
    return ours, {n.split(".")[0] for n in names if n.split(".")[0] != "ultraseg"}


def closure(package: str) -> tuple[set[str], set[str]]:
    """Every ``ultraseg`` module that importing every module of ``package`` runs (parent packages included), and
    every third-party package they import."""
    root = PACKAGE.parent / package.replace(".", "/")
    todo = [".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
            for p in root.rglob("*.py")]
    seen, third_party = set(), set()
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            prefix = ".".join(parts[:k])
            if prefix not in seen:
                seen.add(prefix)
                ours, others = imports(module_file(prefix))
                todo.extend(ours)
                third_party |= others
    return seen, third_party


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_runtime_imports_only_itself_and_the_leaves():
    modules, third_party = closure("ultraseg.runtime")
    assert sorted(m for m in modules if not in_package(m, "ultraseg.runtime") and m not in LEAVES) == []
    assert sorted(third_party & FRAMEWORKS) == []
    assert {"ultraseg.runtime.segmenter", "ultraseg.runtime.preprocess", "ultraseg.runtime.filters",
            "ultraseg.runtime.sources", "ultraseg.runtime.model_files"} <= modules  # the walk found the package


def test_commands_import_no_training_code():
    modules, third_party = closure("ultraseg.commands")
    allowed = LEAVES | COMMAND_LIBRARY
    assert sorted(m for m in modules if not (in_package(m, "ultraseg.runtime") or in_package(m, "ultraseg.commands")
                                             or m in allowed)) == []
    assert sorted(third_party & FRAMEWORKS) == []
    assert {"ultraseg.commands.console", "ultraseg.commands.viewer.server", "ultraseg.runtime.segmenter"} <= modules


def test_the_library_imports_the_runtime_api_from_its_modules():
    """``from ultraseg.runtime import Segmenter`` is for users: the package resolves it on first use, which a reading
    of import statements cannot follow. The library and the stage scripts name the module (``runtime.segmenter``), so
    tests/pipeline/test_dvc_yaml.py sees every file a stage runs."""
    offenders = []
    for path in [*PACKAGE.rglob("*.py"), *(REPO_ROOT / "stages").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "ultraseg.runtime":
                offenders += [f"{path.relative_to(REPO_ROOT)}: {a.name}" for a in node.names
                              if not module_file(f"ultraseg.runtime.{a.name}")]
    assert offenders == []


def test_a_forbidden_import_is_caught(tmp_path, monkeypatch):
    """The static walk sees an import hidden in a function (the kind the runtime uses for pydicom)."""
    module = tmp_path / "ultraseg" / "runtime" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f():\n    from ultraseg import checkpoint\n    import torch\n")
    for name in ("ultraseg/__init__.py", "ultraseg/runtime/__init__.py"):
        (tmp_path / name).write_text("")
    (tmp_path / "ultraseg" / "checkpoint.py").write_text("import torch\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "ultraseg")
    modules, third_party = closure("ultraseg.runtime")
    assert "ultraseg.checkpoint" in modules and "torch" in third_party


BLOCK = ("import sys\n"
         f"for name in {sorted(FRAMEWORKS)!r}: sys.modules[name] = None\n")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, cwd=REPO_ROOT)


def test_runtime_runs_with_the_frameworks_unimportable(zoo, tmp_path):
    image = speckle_image(np.random.default_rng(3), 61, 83)
    np.save(tmp_path / "image.npy", image)
    model = zoo.models / "deploy" / "ultraseg.int8.onnx"
    code = ("import importlib, pkgutil\n"
            "import numpy as np\n"
            "import ultraseg.runtime as rt\n"
            "for m in pkgutil.walk_packages(rt.__path__, 'ultraseg.runtime.'): importlib.import_module(m.name)\n"
            "from ultraseg.runtime import Segmenter\n"
            f"result = Segmenter({str(model)!r}).segment(np.load({str(tmp_path / 'image.npy')!r}))\n"
            "print(result.mask.shape, result.probability.dtype)\n")
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{image.shape} float32"


def test_commands_run_with_the_frameworks_unimportable(zoo, tmp_path):
    Image.fromarray(speckle_image(np.random.default_rng(4), 40, 52)).save(tmp_path / "scan.png")
    model = zoo.models / "deploy" / "ultraseg.int8.onnx"
    code = ("import importlib, pkgutil\n"
            "import ultraseg.commands as commands\n"
            "for m in pkgutil.walk_packages(commands.__path__, 'ultraseg.commands.'): importlib.import_module(m.name)\n"
            "from ultraseg.commands.console import main\n"
            f"sys.exit(main(['predict', {str(tmp_path / 'scan.png')!r}, '--model', {str(model)!r}, "
            f"'--out', {str(tmp_path / 'out')!r}]))\n")
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "scan.png"))
    assert mask.shape == (40, 52) and set(np.unique(mask)) <= {0, 255}


@pytest.mark.parametrize("name", sorted(FRAMEWORKS))
def test_blocking_makes_a_framework_unimportable(name):
    """The runs above prove something only if the block works: each blocked name fails to import."""
    out = run_python(f"import {name}\n")
    assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr
