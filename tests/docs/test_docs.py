"""The README and docs/ are the front door and the house: the commands they show exist, their
links resolve (mkdocs --strict), and the README stays a front door."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from leakstore.cli import app

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
CODE = re.compile(r"```[^\n]*\n(.*?)```|`([^`\n]+)`", re.S)
COMMAND = re.compile(r"(?<!from )(?<!import )\bleakstore ([a-z][a-z-]*)(.*)")
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def written_commands(text: str):
    """(command, [--options]) for every `leakstore CMD ...` in a code span or block of `text`."""
    for m in CODE.finditer(text):
        for line in (m.group(1) or m.group(2)).splitlines():
            for part in re.split(r"&&|;|\||#", line):
                c = COMMAND.search(part)
                if c:
                    yield c.group(1), OPTION.findall(c.group(2))


def test_every_command_and_option_written_in_the_readme_and_docs_exists():
    cli = typer.main.get_command(app)
    known = {
        name: {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
        for name, cmd in cli.commands.items()
    }
    seen, wrong = 0, []
    for page in PAGES:
        for cmd, opts in written_commands(page.read_text()):
            seen += 1
            if cmd not in known:
                wrong.append(f"{page.relative_to(REPO)}: leakstore {cmd} (no such command)")
                continue
            wrong += [f"{page.relative_to(REPO)}: leakstore {cmd} {o}" for o in opts if o not in known[cmd]]
    assert seen > 50, "the parser found too few commands: it is broken"
    assert not wrong, "options written that the CLI does not have:\n" + "\n".join(sorted(set(wrong)))


def test_the_readme_is_a_front_door():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    ci = (REPO / ".ci" / "run").read_text()
    test_cmd = next(line for line in ci.splitlines() if "pytest" in line)
    assert test_cmd.strip() in text, "the README's test command and .ci/run's differ"
    assert "leakstore demo" in text
    for page in PAGES:
        body = page.read_text()
        assert not re.search(r"\bissues?\b|\btargets?\b", body, re.I), f"{page.name} speaks of issues or targets"


def test_the_docs_build_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs comes with the [dev] extra")
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARNING" not in r.stderr, r.stderr  # (mkdocs' -q would hide warnings from --strict)
    assert (tmp_path / "site" / "index.html").is_file()


def test_every_module_the_docs_run_exists():
    """`python -m MODULE` written anywhere a user reads must import (benchmarks run from a checkout)."""
    import importlib.util

    pages = PAGES + [REPO / "CONTRIBUTING.md"]
    mods = {m for page in pages for m in re.findall(r"python -m\s+([A-Za-z_][\w.]*)", page.read_text())}
    assert "benchmarks.gpu_check" in mods, "the parser found no module: it is broken"
    missing = sorted(m for m in mods if importlib.util.find_spec(m) is None)
    assert not missing, f"modules written after 'python -m' that do not exist: {missing}"


def test_every_figure_of_the_readmes_results_table_is_on_the_results_page():
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Results") : text.index("## Limits")]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ") and re.search(r"\d\.\d{3}", ln)]
    figures = {f for ln in rows for f in re.findall(r"\d\.\d{3}|\d+\.\d %", ln)}
    assert len(figures) >= 10, "the parser found too few figures: it is broken"
    results = (REPO / "docs" / "results" / "index.md").read_text()
    missing = sorted(f for f in figures if f not in results)
    assert not missing, f"README results figures not on docs/results/index.md: {missing}"


def _readme_defaults():
    """(option, default as written) for every row of the README's defaults table."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("## Defaults") : text.index("## Results")]
    for ln in table.splitlines():
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`--"):
            continue
        opts = re.findall(r"`(--[a-z-]+)`", cells[0])
        vals = (
            [v.strip(" `") for v in cells[1].split(";")[0].split(", ")]
            if len(opts) > 1
            else [cells[1].split(";")[0].strip(" `")]
        )
        yield from zip(opts, vals)


def test_the_readmes_defaults_are_the_codes():
    from leakstore.model.config import ModelConfig

    cli = typer.main.get_command(app)
    default = {}
    for name in ("featurize", "train"):
        for p in cli.commands[name].params:
            for o in p.opts:
                if o.startswith("--"):
                    default.setdefault(o, p.default)
    default["--open-scorer"] = ModelConfig().open_scorer  # the CLI leaves it None: chosen by --outliers
    rows = list(_readme_defaults())
    assert len(rows) >= 12, "the parser found too few defaults: it is broken"
    wrong = []
    for opt, written in rows:
        want = default[opt]
        want = getattr(want, "value", want)
        if isinstance(want, bool):
            want = "on" if want else "off"
        elif isinstance(want, (tuple, list)):
            want = ",".join(map(str, want))
        ok = (
            (float(written) == float(want))
            if re.fullmatch(r"[\d.]+", written) and isinstance(want, (int, float))
            else written == str(want)
        )
        if not ok:
            wrong.append(f"{opt}: README says {written!r}, the code {want!r}")
    assert not wrong, "\n".join(wrong)
