"""params.py: the schema catches every mistake a params file or `dvc exp run -S` can make, naming the dotted key."""

from __future__ import annotations

import copy
import dataclasses
import re
import subprocess
import sys
import typing

import pytest
import yaml

from ultraseg import params as P
from ultraseg.params import ParamsError
from tests.conftest import shipped, shipped_params


def nested(dotted: str, value) -> dict:
    """``nested("a.b.c", 1) == {"a": {"b": {"c": 1}}}``."""
    out: dict = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def sections(cls: type = P.Params) -> list[type]:
    """``cls`` and every section nested in it."""
    hints = typing.get_type_hints(cls)
    nested = [hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])]
    return [cls] + [s for n in nested for s in sections(n)]


def test_no_field_has_a_default_that_could_drift_from_params_yaml():
    """params.yaml is the one source of values: a default in code is a second one, which tests built on it would
    run instead of what ships."""
    found = sections()
    assert P.TrainParams in found and P.SradParams in found and P.StudentAugmentParams in found
    defaulted = [f"{cls.__name__}.{f.name}" for cls in found for f in dataclasses.fields(cls)
                 if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    assert defaulted == []


def test_from_dict_refuses_a_partial_mapping_naming_the_missing_key(repo_root):
    data = yaml.safe_load((repo_root / "params.yaml").read_text())
    assert P.from_dict(data) == P.load(repo_root / "params.yaml")
    del data["train"]["model"]["norm"]
    with pytest.raises(ParamsError, match=r"^missing key train\.model\.norm; "):
        P.from_dict(data)
    with pytest.raises(ParamsError, match=r"^missing key clip; "):
        P.from_dict({"enabled": True, "tiles": 8}, P.ClaheParams)


def test_shipped_params_are_params_yaml_with_only_the_overrides_changed(repo_root):
    shipped_file = P.load(repo_root / "params.yaml")
    assert shipped_params() == shipped_file
    tiny = shipped_params({"train": {"model": {"widths": [4, 8]}}, "preprocess": {"size": 32}})
    assert tiny.train.model.widths == (4, 8) and tiny.preprocess.size == 32
    assert dataclasses.replace(tiny.train.model, widths=shipped_file.train.model.widths) == shipped_file.train.model
    assert tiny.distill == shipped_file.distill
    assert shipped("train.model", widths=[4, 8]) == tiny.train.model


def test_repo_params_yaml_loads(repo_root):
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    params = P.load(repo_root / "params.yaml")
    assert params.preprocess.size == raw["preprocess"]["size"]
    assert params.preprocess.filter == raw["preprocess"]["filter"]
    assert params.split.seed == raw["split"]["seed"]
    assert params.split.fractions.test == pytest.approx(raw["split"]["fractions"]["test"])
    assert params.fetch.source == raw["fetch"]["source"]


def test_repo_params_yaml_spells_out_every_key(repo_root):
    """params.yaml is the one place a reader sees every tunable: no schema field is left to a hidden default."""
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    params = P.load(repo_root / "params.yaml")
    sections = [f.name for f in dataclasses.fields(P.Params)]
    assert {"fetch", "preprocess", "split"} <= set(sections)
    assert sorted(raw) == sorted(sections)
    for name in sections:
        assert P.to_dict(getattr(params, name)) == raw[name], name


@pytest.mark.parametrize(
    "dotted",
    ["fetchh", "fetch.sourcee", "preprocess.clahe.clipp", "preprocess.filters.lee.windoww",
     "split.duplicates.min_nccc", "split.fractions.tset"],
)
def test_unknown_key_named_at_every_depth(dotted):
    with pytest.raises(ParamsError, match=rf"unknown key {re.escape(dotted)};"):
        shipped_params(nested(dotted, 1))


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ParamsError) as err:
        shipped_params(nested("preprocess.clahe.clipp", 2.0))
    assert str(err.value) == "unknown key preprocess.clahe.clipp; valid keys here: enabled, clip, tiles"


@pytest.mark.parametrize(
    ("dotted", "value", "message"),
    [
        ("preprocess.size", "abc", "preprocess.size: expected int, got 'abc'"),
        ("preprocess.size", True, "preprocess.size: expected int, got True"),
        ("preprocess.size", 128.0, "preprocess.size: expected int, got 128.0"),
        ("split.seed", "42", "split.seed: expected int, got '42'"),
        ("split.fractions.train", "x", "split.fractions.train: expected float, got 'x'"),
        ("split.fractions.train", True, "split.fractions.train: expected float, got True"),
        ("preprocess.clahe.enabled", 1, "preprocess.clahe.enabled: expected bool, got 1"),
        ("fetch.source", 5, "fetch.source: expected str, got 5"),
        ("preprocess.clahe", 3, "preprocess.clahe: expected a mapping, got 3"),
        ("preprocess.filters.lee.window", None, "preprocess.filters.lee.window: expected int, got None"),
    ],
)
def test_wrong_type_names_the_key(dotted, value, message):
    with pytest.raises(ParamsError) as err:
        shipped_params(nested(dotted, value))
    assert str(err.value) == message


def test_optional_field_accepts_none_or_str_and_names_both():
    assert shipped_params(nested("fetch.sha256", None)).fetch.sha256 is None
    assert shipped_params(nested("fetch.sha256", "ab" * 32)).fetch.sha256 == "ab" * 32
    with pytest.raises(ParamsError, match=r"^fetch\.sha256: expected str or NoneType, got 5$"):
        shipped_params(nested("fetch.sha256", 5))


def test_literal_lists_valid_values():
    with pytest.raises(ParamsError) as err:
        shipped_params(nested("preprocess.filter", "foo"))
    message = str(err.value)
    assert message.startswith("preprocess.filter: expected one of ")
    assert message.endswith("got 'foo'")
    for name in ("none", "gaussian", "median", "bilateral", "nlm", "lee", "frost", "kuan", "srad"):
        assert repr(name) in message
    with pytest.raises(ParamsError, match=r"preprocess\.normalize: expected one of 'unit', 'zscore', got 'minmax'"):
        shipped_params(nested("preprocess.normalize", "minmax"))


def test_every_literal_value_is_accepted():
    for name in ("none", "gaussian", "median", "bilateral", "nlm", "lee", "frost", "kuan", "srad"):
        assert shipped_params(nested("preprocess.filter", name)).preprocess.filter == name


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"split": {"fractions": {"train": 0.7, "val": 0.2, "test": 0.2}}}, r"^split\.fractions: .*summing to 1"),
        ({"split": {"fractions": {"train": 0.0, "val": 0.5, "test": 0.5}}}, r"^split\.fractions: "),
        ({"split": {"fractions": {"train": 1.2, "val": -0.4, "test": 0.2}}}, r"^split\.fractions\.train: .*\[0\.0, 1\.0\]"),
        ({"preprocess": {"size": 100}}, r"^preprocess\.size: expected a multiple of 16.*got 100$"),
        ({"preprocess": {"size": 0}}, r"^preprocess\.size: expected a multiple of 16"),
        ({"preprocess": {"clahe": {"clip": -1.0}}}, r"^preprocess\.clahe\.clip: expected a positive number, got -1\.0$"),
        ({"preprocess": {"clahe": {"tiles": 0}}}, r"^preprocess\.clahe\.tiles: expected a positive number"),
        ({"preprocess": {"quality_sample": 0}}, r"^preprocess\.quality_sample: expected a positive number"),
        ({"split": {"duplicates": {"min_ncc": 1.5}}}, r"^split\.duplicates\.min_ncc: expected a value in \[-1\.0, 1\.0\]"),
        ({"split": {"duplicates": {"min_overlap": -0.1}}}, r"^split\.duplicates\.min_overlap: "),
        ({"distill": {"baseline": False, "keep": "best"}}, r"^distill\.keep: 'best' compares with the baseline"),
        ({"train": {"ema": 1.0}}, r"^train\.ema: expected a value in \[0\.0, 0\.9999\], got 1\.0$"),
        ({"train": {"members": 0}}, r"^train\.members: expected a positive number, got 0$"),
        ({"distill": {"ema": -0.5}}, r"^distill\.ema: expected a value in \[0\.0, 0\.9999\]"),
        ({"distill": {"teacher_logits": "stale"}}, r"^distill\.teacher_logits: expected one of 'cached', 'live'"),
        ({"train": {"loss": {"empty_fraction": 0.0}}}, r"^train\.loss\.empty_fraction: expected a value in \(0, 1\]"),
        ({"train": {"loss": {"empty": -1.0}}}, r"^train\.loss\.empty: expected a value in \[0\.0, 100\.0\]"),
    ],
)
def test_validate_rejects_bad_values(data, pattern):
    with pytest.raises(ParamsError, match=pattern):
        shipped_params(data)


def test_valid_edge_values_pass():
    params = shipped_params({"split": {"fractions": {"train": 0.8, "val": 0.01, "test": 0.19}}, "preprocess": {"size": 16}})
    assert params.split.fractions.val == 0.01
    assert params.preprocess.size == 16


def test_ints_widen_to_float():
    params = shipped_params({"preprocess": {"clahe": {"clip": 3}, "filters": {"gaussian": {"sigma": 2}}},
                            "train": {"lr": 1}})
    assert params.preprocess.clahe.clip == 3.0 and type(params.preprocess.clahe.clip) is float
    assert params.preprocess.filters.gaussian.sigma == 2.0 and type(params.preprocess.filters.gaussian.sigma) is float
    assert type(params.train.lr) is float
    # and floats never narrow to int
    assert type(params.preprocess.size) is int


def test_load_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ParamsError, match=rf"^{re.escape(str(missing))}: params file not found$"):
        P.load(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("preprocess: {size: [\n")
    with pytest.raises(ParamsError, match=rf"^{re.escape(str(bad))}: not valid YAML"):
        P.load(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="expected a mapping of sections"):
        P.load(listed)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ParamsError, match=rf"^{re.escape(str(empty))}: empty params file$"):
        P.load(empty)


def test_a_cut_short_params_file_is_refused(tmp_path, repo_root):
    """A file truncated at any line boundary leaves a key out, and is refused naming the first missing key."""
    lines = (repo_root / "params.yaml").read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.yaml"
    cut.write_text("".join(lines[: len(lines) - 2]))
    with pytest.raises(ParamsError, match=rf"^{re.escape(str(cut))}: missing key benchmark\.retries; "):
        P.load(cut)
    only = tmp_path / "only.yaml"
    only.write_text("fetch: {source: x, sha256: null}\n")
    with pytest.raises(ParamsError, match=r"missing key preprocess;"):
        P.load(only)


def test_load_reads_values(tmp_path, params_file):
    path = params_file(tmp_path / "params.yaml", {"preprocess": {"size": 64, "filter": "lee",
                                                                 "filters": {"lee": {"window": 5}}},
                                                  "split": {"seed": 7}})
    params = P.load(path)
    assert params.preprocess.size == 64
    assert params.preprocess.filter == "lee"
    assert params.preprocess.filters.kwargs("lee") == {"window": 5}
    assert params.preprocess.filters.kwargs("none") == {}
    assert params.split.seed == 7
    assert params.preprocess.clahe == shipped("preprocess.clahe")  # the keys not changed keep the shipped values


def test_params_error_is_a_value_error():
    assert issubclass(ParamsError, ValueError)


def test_digest_stable_and_sensitive():
    base = shipped("preprocess")
    assert re.fullmatch(r"[0-9a-f]{12}", P.digest(base))
    assert P.digest(base) == P.digest(shipped_params().preprocess)
    assert P.digest(base) == P.digest(copy.deepcopy(base))
    changed = dataclasses.replace(base, size=64)
    assert P.digest(changed) != P.digest(base)
    nested_change = dataclasses.replace(base, clahe=dataclasses.replace(base.clahe, clip=2.5))
    assert P.digest(nested_change) != P.digest(base)
    assert P.digest(shipped("split")) != P.digest(base)


def test_digest_same_in_a_fresh_interpreter(repo_root):
    """No dependence on hash randomisation or object identity: another process computes the same digest."""
    code = "from ultraseg import params as P; print(P.digest(P.load('params.yaml')))"
    other = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True)
    assert other.stdout.strip() == P.digest(shipped_params())


def test_to_dict_is_plain_json_data():
    data = P.to_dict(shipped_params())
    assert data["preprocess"]["clahe"] == {"enabled": True, "clip": 2.0, "tiles": 8}
    assert data["fetch"] == {"source": "../shared/data/busi", "sha256": None, "extra_sources": []}
    assert P.from_dict(data) == shipped_params()


def test_extra_sources_must_be_a_list_of_paths():
    assert shipped_params({"fetch": {"extra_sources": ["a", "b=/c"]}}).fetch.extra_sources == ("a", "b=/c")
    with pytest.raises(P.ParamsError, match=r"^fetch.extra_sources: expected a list, got '/data/a'"):
        shipped_params({"fetch": {"extra_sources": "/data/a"}})


def test_val_split_cannot_be_empty():
    with pytest.raises(P.ParamsError, match=r"^split.fractions: train, val and test must be positive"):
        shipped_params({"split": {"fractions": {"train": 0.8, "val": 0.0, "test": 0.2}}})


@pytest.mark.parametrize("section, value, key", [
    ("median", {"window": 4}, "preprocess.filters.median.window"),
    ("srad", {"step": 0}, "preprocess.filters.srad.step"),
    ("gaussian", {"sigma": -1.0}, "preprocess.filters.gaussian.sigma"),
])
def test_bad_filter_parameter_names_its_dotted_key(section, value, key):
    with pytest.raises(P.ParamsError, match="^" + key.replace(".", r"\.") + ":"):
        shipped_params({"preprocess": {"filters": {section: value}}})


def test_params_is_a_leaf_that_loads_nothing_heavy():
    """The torch-free runtime and the light stages read params: importing it loads no framework and no other
    ultraseg module."""
    code = ("import sys, ultraseg.params; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'torch', 'onnx', 'onnxruntime', 'torch_pruning', 'numpy', 'cv2', 'scipy', 'ultraseg'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['ultraseg', 'ultraseg.params']"


def test_directly_built_sections_get_the_file_checks():
    """validate() re-checks every field's type, so a dataclass made in code is held to the params file's rules."""
    with pytest.raises(ParamsError, match=r"^prune\.importance: expected one of 'l1', 'l2', 'bn_scale', 'taylor', "
                                          r"got 'random'$"):
        dataclasses.replace(shipped("prune"), importance="random").validate("prune")
    with pytest.raises(ParamsError, match=r"^train\.model\.widths\[1\]: expected int, got 2\.5$"):
        model = dataclasses.replace(shipped("train.model"), widths=(1, 2.5))
        dataclasses.replace(shipped("train"), model=model).validate("train")


def test_student_augment_overrides_only_the_ranges_it_sets():
    """distill.augment changes the student's geometric ranges and nothing else; the teacher keeps train's."""
    p = shipped_params({"train": {"augment": {"scale": 0.1, "aspect": 0.05}}, "distill": {"augment": {"scale": 0.35}}})
    student = p.distill.budget(p.train).augment
    assert (student.scale, student.aspect, student.translate) == (0.35, 0.05, p.train.augment.translate)
    assert dataclasses.replace(student, scale=0.1) == p.train.augment
    with pytest.raises(ParamsError, match=r"^distill\.augment\.scale: expected a value in \[0\.0, 1\.0\), got 1\.0$"):
        shipped_params({"distill": {"augment": {"scale": 1.0}}})
    with pytest.raises(ParamsError, match=r"^unknown key distill\.augment\.rotate; valid keys here: scale, aspect"):
        shipped_params({"distill": {"augment": {"rotate": 5.0}}})


def test_student_task_loss_takes_its_own_empty_weight_or_the_teachers():
    shared = shipped_params({"train": {"loss": {"empty": 0.2}}})
    assert shared.distill.task_loss(shared.train)["empty"] == 0.2
    own = shipped_params({"train": {"loss": {"empty": 0.2, "dice": 0.5}}, "distill": {"empty_weight": 0.05}})
    loss = own.distill.task_loss(own.train)
    assert loss["empty"] == 0.05 and loss["dice"] == 0.5 and own.train.loss.empty == 0.2
    with pytest.raises(ParamsError, match=r"^distill\.empty_weight: expected a value in \[0\.0, 100\.0\]"):
        shipped_params({"distill": {"empty_weight": -0.1}})
