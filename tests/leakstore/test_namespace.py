"""One import name: an installed leakstore puts only `leakstore` on the import path, so a user's
own model.py, pipelines.py or featurize/ beside their notebook never shadows a stage."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_leakstore_works_beside_a_users_model_py_and_pipelines_py(tmp_path):
    for name in ("model", "pipelines", "featurize"):
        (tmp_path / f"{name}.py").write_text(f"raise RuntimeError('the user\\'s own {name}.py was imported')\n")
    code = (
        "import leakstore.cli, leakstore.model.train, leakstore.featurize.runner, leakstore.pipelines.score\n"
        "from leakstore import Attributor\n"
        "for name in ('model', 'pipelines', 'featurize'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except RuntimeError as e:\n"
        "        print('user', name)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["user model", "user pipelines", "user featurize"]
    r = subprocess.run(
        [sys.executable, "-m", "leakstore.cli", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0 and "featurize" in r.stdout, r.stderr


@pytest.mark.slow
def test_the_wheel_holds_only_the_leakstore_package(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel here needs setuptools")
    import shutil

    src = tmp_path / "src"  # a copy: building leaves build/ and egg-info behind
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "leakstore", "featurize", "model", "pipelines", "benchmarks", "tests"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, src / name)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(src),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("leakstore-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"leakstore"}
    assert "leakstore/model/train.py" in names and "leakstore/featurize/runner.py" in names
    assert "leakstore/pipelines/score.py" in names
    assert not any("bench_" in n or "gpu_check" in n or "probe_" in n or n.startswith("tests/") for n in names)
