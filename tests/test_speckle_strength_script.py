"""scripts/speckle_strength.py: the suite's speckle and training's, measured in the network input of real scans."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import load_script, write_params


@pytest.fixture
def script():
    return load_script("scripts/speckle_strength.py")


def test_stronger_severities_and_stronger_training_speckle_measure_larger(script, busi_mirror, tmp_path):
    data = tmp_path / "busi"
    for cls in ("benign", "malignant"):
        (data / cls).mkdir(parents=True)
        for name in (f"{cls} (1).webp", f"{cls} (1)_mask.png"):
            shutil.copy(busi_mirror / cls / name, data / cls / name)
    sizes = {}
    for cv in (0.15, 0.3):
        params = write_params(tmp_path / f"params-{cv}.yaml", {"train": {"augment": {"speckle": cv}}})
        out = tmp_path / f"{cv}.json"
        script.main(["--images", "2", "--data", str(data), "--params", str(params), "--out", str(out)])
        sizes[cv] = json.loads(out.read_text())
    shift = sizes[0.15]["shift"]
    assert sizes[0.15]["images"] == 2 and shift == sizes[0.3]["shift"]  # seeded: the suite's draws repeat
    assert shift["mild"]["fine"] < shift["moderate"]["fine"] < shift["strong"]["fine"]
    assert shift["mild"]["coarse"] < shift["moderate"]["coarse"] < shift["strong"]["coarse"]
    assert sizes[0.15]["augment"]["fine"] < sizes[0.3]["augment"]["fine"]


def test_a_folder_without_lesion_images_is_named(script, tmp_path):
    with pytest.raises(SystemExit, match="no benign/ or malignant/ images"):
        script.main(["--data", str(tmp_path), "--out", str(tmp_path / "x.json")])
