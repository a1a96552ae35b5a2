"""The layering of the package, read from the source's import statements (function-level ones too).

    core        leakstore.{config, errors, device, envinfo, fsio, store, version}, leakstore.features
    stages      leakstore.featurize, leakstore.model          (neither imports the other)
    api         leakstore.api (Predictor, Attributor: in-process scoring, the two stages joined)
    pipelines   leakstore.pipelines                           (dask jobs, evaluation, reports, studies)
    interfaces  leakstore.cli (the command line), the package itself (`from leakstore import ...`)

A module may import its own layer and the layers below it, never one above; no module imports
another module's private (underscored) name. docs/layout.md draws the same graph."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "leakstore": "leakstore",
    "featurize": "leakstore.featurize",
    "model": "leakstore.model",
    "pipelines": "leakstore.pipelines",
}


def layer_of(module: str) -> tuple[int, str]:
    """(rank, name): the layer of a leakstore module; the name tells the two stages apart."""
    parts = module.split(".")
    if module == "leakstore" or parts[1] == "cli":
        return 4, "interfaces"
    if parts[1] == "pipelines":
        return 3, "pipelines"
    if parts[1] == "api":
        return 2, "api"
    if parts[1] in ("featurize", "model"):
        return 1, parts[1]
    return 0, "core"


def modules(root: Path) -> dict[str, Path]:
    """{module name: source file} of every module of the package in a checkout at `root`."""
    out = {}
    for folder, pkg in FOLDERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(root / folder).with_suffix("").parts if p != "__init__"]
            out[".".join([pkg, *parts])] = path
    return out


def imports(path: Path, module: str) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names taken from it) for every leakstore import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                pkg = module.split(".")
                keep = pkg if path.name == "__init__.py" else pkg[:-1]
                base = ".".join(keep[: len(keep) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == "leakstore":
                found.append((node.lineno, base, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "leakstore"]
    return found


def violations(root: Path) -> list[str]:
    """One line per import that breaks the layering, in the checkout at `root`."""
    mods = modules(root)
    bad = []
    for mod, path in mods.items():
        rank, name = layer_of(mod)
        for line, target, names in imports(path, mod):
            where = f"{path.relative_to(root)}:{line}"
            t_rank, t_name = layer_of(target)
            if t_rank > rank:
                bad.append(f"{where}: {mod} ({name}) imports {target} ({t_name}), a layer above it")
            elif rank == t_rank == 1 and t_name != name:
                bad.append(f"{where}: stage {name} imports the other stage ({target})")
            for n in names:
                sub = f"{target}.{n}"
                if n.startswith("_") and not n.startswith("__") and sub not in mods and target != mod:
                    bad.append(f"{where}: {mod} imports the private name {n} of {target}")
    return bad


def test_the_package_keeps_its_layers():
    assert violations(ROOT) == []


def test_every_module_is_read():
    found = modules(ROOT)
    for mod in (
        "leakstore.config",
        "leakstore.cli",
        "leakstore.api.predictor",
        "leakstore.featurize.runner",
        "leakstore.model.train",
        "leakstore.pipelines.score",
        "leakstore.features.periodicity",
    ):
        assert mod in found


@pytest.mark.parametrize(
    "folder, file, planted, expect",
    [
        ("leakstore", "config.py", "from leakstore.model.config import ModelConfig", "a layer above"),
        ("leakstore", "store.py", "import leakstore.pipelines.score", "a layer above"),
        ("featurize", "vae.py", "from leakstore.pipelines.cluster import connect", "a layer above"),
        ("model", "train.py", "from leakstore.featurize import views", "the other stage"),
        ("pipelines", "score.py", "from leakstore.cli import app", "a layer above"),
        ("leakstore", "api/attributor.py", "from leakstore.pipelines.score import score", "a layer above"),
        ("pipelines", "sweep.py", "from leakstore.pipelines.report import _networks", "private name"),
        ("featurize", "runner.py", "from . import _planted", None),  # a private module of its own package: fine
    ],
)
def test_a_planted_import_breaks_the_check(tmp_path, folder, file, planted, expect):
    for f in FOLDERS:
        shutil.copytree(ROOT / f, tmp_path / f, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "featurize" / "_planted.py").write_text("")
    path = tmp_path / folder / file
    path.write_text(path.read_text() + f"\n\ndef planted():\n    {planted}\n")
    bad = violations(tmp_path)
    if expect is None:
        assert bad == []
    else:
        assert len(bad) == 1 and expect in bad[0] and f"{folder}/{file}" in bad[0], bad


def test_layout_doc_names_every_module():
    doc = (ROOT / "docs" / "layout.md").read_text()
    missing = [
        m
        for m, p in modules(ROOT).items()
        if p.name != "__init__.py" and p.name not in doc and f"`{p.stem}`" not in doc
    ]
    assert missing == [], f"docs/layout.md does not name {missing}"
