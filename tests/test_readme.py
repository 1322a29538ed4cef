"""The README's test command is what CI runs, in a fresh virtual environment (.ci/run)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in readme.splitlines() if "pytest" in line and line.startswith("python3"))
    install, _, test = command.partition(" && ")
    assert install.replace("python3 -m pip install", "python3 -m pip install -q --disable-pip-version-check") in ci
    assert test in ci.splitlines()
    assert "python3 -m venv" in ci and "rm -rf" in ci
