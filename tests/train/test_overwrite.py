"""--overwrite destroys only the command's own earlier output: never an input, a directory holding one, or a
training run. And a staging folder that a killed prepare, import-hf or export-hf left is removed next time."""

import shutil

import pytest

from hybridcore.cli import main
from hybridcore.errors import EXIT_USAGE
from hybridcore.io.files import STAGING


def snapshot(path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def run(reference_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(reference_run[0], copy)
    return copy


@pytest.fixture
def texts(tmp_path):
    folder = tmp_path / "mytexts"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.txt").write_text(f"document {i} " * 20)
    return folder


@pytest.mark.parametrize("command", [
    ["export-hf", "{run}", "{run}", "--overwrite"],
    ["export-hf", "{run}/checkpoints/step_0000008", "{run}", "--overwrite"],
    ["prepare", "{texts}", "--out", "{texts}", "--overwrite", "--quiet"],
    ["prepare", "{texts}/0.txt", "--out", "{run}", "--overwrite", "--quiet"],
    ["prepare", "{texts}/0.txt", "--out", "{run}/data", "--overwrite", "--quiet"],
    ["import-hf", "{hf}", "{hf}", "--overwrite"],
    ["import-hf", "{hf}", "{tmp}", "--overwrite"],
], ids=["export-onto-its-run", "export-onto-the-run-of-its-checkpoint", "prepare-onto-its-corpus",
        "prepare-onto-a-run", "prepare-into-a-run", "import-onto-its-source", "import-onto-a-folder-holding-it"])
def test_overwrite_never_destroys_an_input_or_a_run(run, texts, tmp_path, capsys, command):
    (run / "data").mkdir()
    (run / "data" / "notes.txt").write_text("the run's own")
    assert main(["export-hf", str(run), str(tmp_path / "hf")]) == 0
    before = {name: snapshot(path) for name, path in (("run", run), ("texts", texts), ("hf", tmp_path / "hf"))}
    capsys.readouterr()
    args = [part.format(run=run, texts=texts, hf=tmp_path / "hf", tmp=tmp_path) for part in command]
    assert main(args) == EXIT_USAGE
    error = capsys.readouterr().err
    assert "refusing to overwrite" in error, error
    assert ("training run directory" in error) or ("the input" in error), error
    after = {name: snapshot(path) for name, path in (("run", run), ("texts", texts), ("hf", tmp_path / "hf"))}
    assert after == before  # every checkpoint, metrics row and input byte is still there


@pytest.mark.parametrize("command", ["prepare", "import-hf", "export-hf"])
def test_a_killed_commands_staging_folder_is_removed_on_the_next_run(run, texts, tmp_path, capsys, command):
    assert main(["export-hf", str(run), str(tmp_path / "hf")]) == 0
    out = tmp_path / "out"
    leftover = tmp_path / f".out{STAGING}0123abcd"  # as a kill -9 in the middle of writing leaves it
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"\0" * 1000)
    args = {"prepare": ["prepare", str(texts), "--out", str(out), "--quiet"],
            "import-hf": ["import-hf", str(tmp_path / "hf"), str(out)],
            "export-hf": ["export-hf", str(run), str(out)]}[command]
    assert main(args) == 0
    assert not leftover.exists() and out.is_dir()
    assert f"removed {leftover}" in capsys.readouterr().err
