"""pipeline/stage.py: every stage's command line shows its docstring and takes --params; bad params, bad data and
missing inputs end the process with one `error: ...` line, other exceptions keep their traceback."""

from __future__ import annotations

import pytest

from ultraseg.errors import DataError
from ultraseg.params import Params, ParamsError, load
from ultraseg.pipeline import stage

DOC = """thing: do the thing to the data.

Reads data/in and writes
data/out, with care.
"""


def test_parser_shows_summary_and_details(capsys):
    ap = stage.parser(DOC)
    assert ap.description == "thing: do the thing to the data."
    assert ap.epilog == "Reads data/in and writes\ndata/out, with care."
    with pytest.raises(SystemExit) as exit_:
        ap.parse_args(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "thing: do the thing to the data." in out
    assert "Reads data/in and writes\ndata/out, with care." in out  # raw formatting keeps the line breaks
    assert "--params" in out and "params.yaml" in out


def test_parser_of_a_one_line_or_missing_docstring():
    assert stage.parser("just a summary").description == "just a summary"
    assert stage.parser("just a summary").epilog is None
    assert stage.parser("  summary  \n\n   \n").epilog is None
    assert stage.parser(None).description == ""
    assert stage.parser(None).epilog is None


def test_params_option_defaults_to_params_yaml():
    ap = stage.parser(DOC)
    assert ap.parse_args([]).params == "params.yaml"
    assert ap.parse_args(["--params", "other.yaml"]).params == "other.yaml"


def test_parse_loads_the_params_file(tmp_path, params_file):
    path = params_file(tmp_path / "p.yaml", {"train": {"lr": 0.01}})
    ap = stage.parser(DOC)
    ap.add_argument("--out", default="x")
    args, params = stage.parse(ap, ["--params", str(path), "--out", "y"])
    assert args.out == "y" and args.params == str(path)
    assert isinstance(params, Params)
    assert params.train.lr == 0.01
    assert params == load(path)


def one_line_exit(ap, argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        stage.parse(ap, argv)
    message = exit_.value.code
    assert isinstance(message, str)  # sys.exit(str): printed to stderr, exit status 1
    assert len(message.splitlines()) == 1, message
    return message


def test_parse_exits_with_one_line_for_a_bad_value(tmp_path, params_file):
    path = params_file(tmp_path / "p.yaml", {"train": {"lr": "abc"}})
    message = one_line_exit(stage.parser(DOC), ["--params", str(path)])
    assert message == f"error: {path}: train.lr: expected float, got 'abc'"


def test_parse_exits_with_one_line_for_an_unknown_key(tmp_path, params_file):
    path = params_file(tmp_path / "p.yaml", {"export": {"opsett": 18}})
    message = one_line_exit(stage.parser(DOC), ["--params", str(path)])
    assert message.startswith(f"error: {path}: unknown key export.opsett")


def test_parse_exits_with_one_line_for_invalid_yaml(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train: [unclosed\n  lr: 1\n")
    message = one_line_exit(stage.parser(DOC), ["--params", str(path)])
    assert message.startswith(f"error: {path}: not valid YAML at line 2, column ")


def test_parse_exits_with_one_line_for_a_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"
    assert one_line_exit(stage.parser(DOC), ["--params", str(path)]) == f"error: {path}: params file not found"


@pytest.mark.parametrize("error", [
    DataError("data/raw: no images found"),
    ParamsError("params.yaml: train.lr: expected float, got 'abc'"),
    FileNotFoundError("models/teacher.pt: checkpoint not found; run the stage that writes it"),
])
def test_fail_cleanly_turns_expected_errors_into_one_line(error):
    @stage.fail_cleanly
    def main(argv=None):
        raise error

    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == f"error: {error}"


@pytest.mark.parametrize("error", [RuntimeError("a bug"), KeyError("meta"), ValueError("not a DataError"),
                                   TypeError("bad call")])
def test_fail_cleanly_lets_other_exceptions_through(error):
    @stage.fail_cleanly
    def main(argv=None):
        raise error

    with pytest.raises(type(error)) as raised:
        main([])
    assert raised.value is error


def test_fail_cleanly_passes_argv_and_keeps_the_docstring():
    seen = []

    @stage.fail_cleanly
    def main(argv=None):
        """stage: what it does."""
        seen.append(argv)

    assert main.__doc__ == "stage: what it does."
    assert main(["--params", "p.yaml"]) is None
    main()
    assert seen == [["--params", "p.yaml"], None]


def test_fail_cleanly_wraps_parse_errors_of_the_stage(tmp_path, params_file):
    """A stage main built from parser + parse + fail_cleanly, as the stage scripts are."""
    path = params_file(tmp_path / "p.yaml", {"train": {"lr": "abc"}})

    @stage.fail_cleanly
    def main(argv=None):
        """stage: summary."""
        stage.parse(stage.parser(main.__doc__), argv)
        raise AssertionError("not reached")

    with pytest.raises(SystemExit) as exit_:
        main(["--params", str(path)])
    assert exit_.value.code == f"error: {path}: train.lr: expected float, got 'abc'"
