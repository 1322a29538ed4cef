"""The documentation holds together: every relative link and anchor resolves, every `hybridcore` command
shown in a shell block (```bash) parses with the real argument parser, every script it runs exists, and the
generated configuration reference is current."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from hybridcore import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
SHELL = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.S | re.M)  # the blocks that hold commands
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", title)))
    return found


def commands(path: Path) -> list[list[str]]:
    """Every `hybridcore ...` invocation in the page's shell blocks, as arguments after `hybridcore`."""
    found = []
    for block in SHELL.findall(path.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)  # quotes kept, ; && | split off
            lexer.whitespace_split = True
            words, commands_of_line = [], []
            for token in [*lexer, ";"]:
                if set(token) <= set("();<>|&"):
                    commands_of_line.append(words)
                    words = []
                else:
                    words.append(token)
            for words in commands_of_line:
                if "hybridcore" in words and (words[0] == "hybridcore" or words[words.index("hybridcore") - 1] == "-m"):
                    found.append(words[words.index("hybridcore") + 1:])
    return found


def scripts(path: Path) -> list[str]:
    """Paths of the python and bash scripts the page's shell blocks run."""
    found = []
    for block in SHELL.findall(path.read_text()):
        found += re.findall(r"(?:python3?|bash) ((?:benchmarks|docs)/[\w./-]+\.(?:py|sh))", block)
    return found


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_and_anchors_resolve(page):
    text = FENCE.sub("", page.read_text())
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        assert linked.exists(), f"{page_id(page)}: link to {target}: {file} does not exist"
        if anchor:
            assert linked.suffix == ".md" and anchor in anchors(linked), \
                f"{page_id(page)}: link to {target}: no heading #{anchor} in {page_id(linked)}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_command_shown_parses(page, capsys):
    for arguments in commands(page):
        command = arguments[0] if arguments else None
        assert command in cli.COMMANDS, f"{page_id(page)}: `hybridcore {' '.join(arguments)}`: no such command"
        try:
            cli.build_parser(command).parse_args(arguments)
        except SystemExit:
            pytest.fail(f"{page_id(page)}: `hybridcore {' '.join(arguments)}` does not parse: "
                        f"{capsys.readouterr().err.strip()}")
    for script in scripts(page):
        assert (ROOT / script).exists(), f"{page_id(page)}: runs {script}, which does not exist"


def test_every_command_shown_has_help(capsys):
    shown = {arguments[0] for page in PAGES for arguments in commands(page)}
    assert {"train", "generate", "import-hf", "export-hf"} <= shown  # the quickstart's commands are seen
    for command in sorted(shown):
        with pytest.raises(SystemExit) as done:
            cli.main([command, "--help"])
        assert done.value.code == 0 and f"usage: hybridcore {command}" in capsys.readouterr().out


def test_the_configuration_reference_is_current():
    spec = importlib.util.spec_from_file_location("make_configuration", ROOT / "docs" / "make_configuration.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "configuration.md").read_text() == module.document(), \
        "docs/configuration.md is stale: run python docs/make_configuration.py"


def test_a_field_without_a_description_is_named(monkeypatch):
    spec = importlib.util.spec_from_file_location("make_configuration", ROOT / "docs" / "make_configuration.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "field_notes", lambda cls: {})
    monkeypatch.setattr(module, "train_flags", lambda: {})
    monkeypatch.setattr(module, "MEANINGS", {})
    with pytest.raises(ValueError, match="ModelConfig.vocab_size has no description"):
        module.document()
