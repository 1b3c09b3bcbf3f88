"""The profile switch: ``--profile`` picks that profile's deployable file in predict, serve and evaluate-folder,
``--model``/``MODEL`` names any file instead, and giving both is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from ultraseg.commands import console, evaluate_folder, predict
from ultraseg.commands.viewer import server
from ultraseg.errors import DataError
from ultraseg.runtime.model_files import PROFILES

COMMANDS = {  # command line before the model options, and the module whose Segmenter it builds
    "predict": (["predict", "scan.png", "--out", "out"], predict),
    "evaluate-folder": (["evaluate-folder", "site", "--out", "out"], evaluate_folder),
    "serve": (["serve"], server),
}


def opened(monkeypatch, tmp_path, command: str, options: list[str]) -> Path:
    """The model file ``ultraseg COMMAND ... OPTIONS`` opens, run from ``tmp_path``: the module's Segmenter records
    the path and refuses it, so the command stops there with its model error."""
    args, module = COMMANDS[command]
    seen = []

    def refuse(path, *_, **__):
        seen.append(Path(path))
        raise DataError(f"{path}: refused by the test")

    monkeypatch.setattr(module, "Segmenter", refuse)
    monkeypatch.chdir(tmp_path)
    assert console.main(args + options) == 2
    return seen[0]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("profile", PROFILES)
def test_a_profile_opens_its_own_file(monkeypatch, tmp_path, command, profile):
    assert opened(monkeypatch, tmp_path, command, ["--profile", profile]) == Path("models") / PROFILES[profile]


@pytest.mark.parametrize("command", COMMANDS)
def test_without_options_the_edge_profile_runs(monkeypatch, tmp_path, command):
    assert opened(monkeypatch, tmp_path, command, []) == Path("models") / PROFILES["edge"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_named_file_runs_instead(monkeypatch, tmp_path, command):
    named = ["my.onnx"] if command == "serve" else ["--model", "my.onnx"]
    assert opened(monkeypatch, tmp_path, command, named) == Path("my.onnx")


@pytest.mark.parametrize("command", COMMANDS)
def test_a_profile_and_a_file_together_are_refused(capsys, command):
    args, _ = COMMANDS[command]
    named = ["my.onnx"] if command == "serve" else ["--model", "my.onnx"]
    with pytest.raises(SystemExit) as exit_:
        console.main(args + ["--profile", "accurate"] + named)
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_an_unknown_profile_is_refused_naming_the_choices(capsys):
    with pytest.raises(SystemExit):
        console.main(["predict", "scan.png", "--out", "out", "--profile", "fast"])
    err = capsys.readouterr().err
    assert "invalid choice: 'fast'" in err and "'edge'" in err and "'accurate'" in err
