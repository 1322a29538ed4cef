"""What a maintainer expects of the package: one version string, the declared licence, a lint step in CI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import hybridcore

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the checks read pyproject.toml


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_version_has_one_source():
    project = pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "hybridcore.__version__"}
    from setuptools.config.pyprojecttoml import read_configuration

    assert read_configuration(ROOT / "pyproject.toml")["project"]["version"] == hybridcore.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", hybridcore.__version__)


def test_the_licence_file_is_the_apache_2_text_pyproject_declares():
    assert pyproject()["project"]["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    for section in ("1. Definitions.", "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS"):
        assert section in text


def test_ci_lints_with_ruff_from_the_test_extra_before_the_tests():
    project = pyproject()
    assert any(requirement.startswith("ruff") for requirement in project["project"]["optional-dependencies"]["test"])
    assert project["tool"]["ruff"]["lint"]["select"]
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    steps = [i for i, line in enumerate(lines) if line.startswith("python3 -m ")]
    commands = [lines[i].split()[2] for i in steps]
    assert commands[:2] == ["venv", "pip"] and commands.index("ruff") < commands.index("pytest")
