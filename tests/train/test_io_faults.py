"""Operating-system faults end in one paragraph naming the path, the cause and what was kept (exit 4), never
a library traceback, and lose nothing written before them."""

import errno
import os
from contextlib import contextmanager

import pytest
import torch.distributed.checkpoint.filesystem as dcp_filesystem

import hybridcore.bridge.safetensors_io as safetensors_io
from hybridcore.cli import main
from hybridcore.errors import EXIT_IO, EXIT_USAGE
from hybridcore.io.checkpoints import verify_checkpoint
from hybridcore.train.checkpoint import list_checkpoints

from .conftest import loss_lines, train_cli_args
from .filesystems import read_only, small_tmpfs, writable_tmpfs


class _FullDisk:
    """A file whose writes fail with ENOSPC after `room` bytes, as on a full disk."""

    def __init__(self, stream, path, room):
        self.stream, self.path, self.room = stream, path, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        self.room -= len(data)
        return self.stream.write(data)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def fill_the_disk_at(monkeypatch, fragment: str):
    """DCP's writes into paths containing `fragment` hit a full disk after 4 KiB."""
    real = dcp_filesystem.FileSystem.create_stream

    @contextmanager
    def create_stream(self, path, mode):
        with real(self, path, mode) as stream:
            yield _FullDisk(stream, path, 4096) if fragment in str(path) and "w" in mode else stream

    monkeypatch.setattr(dcp_filesystem.FileSystem, "create_stream", create_stream)


def assert_one_paragraph(error: str) -> None:
    assert "Traceback" not in error and error.count("\n") <= 1, error


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, data_dir, reference_run, monkeypatch,
                                                                capsys):
    out = tmp_path / "run"
    fill_the_disk_at(monkeypatch, ".tmp-step_0000008")
    assert main(train_cli_args(out, data_dir, steps=12, save_every=4)) == EXIT_IO
    error = capsys.readouterr().err
    assert_one_paragraph(error)
    assert f"writing checkpoint step_0000008 failed: {out}/checkpoints/.tmp-step_0000008/__0_0.distcp: no space " \
           f"left on the device (ENOSPC)" in error
    assert f"Kept in {out}: checkpoint step_0000004; metrics.jsonl holds steps 1-8" in error
    assert f"then continue with `hybridcore train --out {out} --resume`" in error
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000004"]  # the partial one is gone
    assert verify_checkpoint(out / "checkpoints" / "step_0000004") is None

    monkeypatch.undo()  # space freed: the run continues as if nothing had happened
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert loss_lines(out) == loss_lines(reference_run[0])


def test_a_really_full_tmpfs(tmp_path, data_dir, capsys):
    with small_tmpfs(tmp_path / "small", 2600) as disk:  # room for one checkpoint of the tiny model, not two
        out = disk / "run"
        assert main(train_cli_args(out, data_dir, steps=12, save_every=4)) == EXIT_IO
        error = capsys.readouterr().err
        assert_one_paragraph(error)
        assert "writing checkpoint step_0000008 failed" in error and "(ENOSPC)" in error
        assert [step for step, _ in list_checkpoints(out)] == [4]
        assert verify_checkpoint(out / "checkpoints" / "step_0000004") is None
        assert [s for s, _ in loss_lines(out)] == list(range(1, 9))


def test_a_read_only_run_directory(tmp_path, data_dir, capsys):
    with writable_tmpfs(tmp_path / "disk") as disk:
        out = disk / "run"
        assert main(train_cli_args(out, data_dir, steps=4, save_every=2)) == 0
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        capsys.readouterr()
        with read_only(disk):
            assert main(["train", "--out", str(out), "--resume", "--steps", "6"]) == EXIT_IO
            lines = capsys.readouterr().err.splitlines(keepends=True)
            assert lines[0].startswith("note: --steps 6 (the run was planned for 4)")  # before any writing
            error = "".join(lines[1:])
            assert main(train_cli_args(disk / "new", data_dir)) == EXIT_IO
            second = capsys.readouterr().err
        assert_one_paragraph(error)
        cause = "the filesystem is read-only (EROFS)" if os.geteuid() == 0 else "permission denied (EACCES)"
        assert f"training in {out} failed: {out}/run.lock: {cause}" in error
        assert f"Kept in {out}: checkpoints step_0000002, step_0000004; metrics.jsonl holds steps 1-4" in error
        assert f"{disk}/new: {cause}" in second and not (disk / "new").exists()
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_out_naming_an_existing_file(tmp_path, data_dir, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    assert main(train_cli_args(out, data_dir)) == EXIT_USAGE
    assert f"--out: {out} exists and is not a directory" in capsys.readouterr().err
    assert out.read_text() == "mine"


@pytest.mark.parametrize("command", ["export-hf", "import-hf"])
def test_a_full_disk_while_converting_keeps_the_old_output(reference_run, tmp_path, monkeypatch, capsys, command):
    assert main(["export-hf", str(reference_run[0]), str(tmp_path / "hf")]) == 0
    source, out = (reference_run[0], tmp_path / "hf") if command == "export-hf" else (tmp_path / "hf", tmp_path / "m")
    if command == "import-hf":
        assert main(["import-hf", str(source), str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(tensors, path, metadata=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(safetensors_io, "save_file", full)
    assert main([command, str(source), str(out), "--overwrite"]) == EXIT_IO
    error = capsys.readouterr().err
    assert_one_paragraph(error)
    doing = "exporting" if command == "export-hf" else "importing"
    assert f"{doing} {source} to {out} failed: " in error and "model.safetensors: no space left" in error
    assert f"{out} was not changed (the partial output was removed)" in error
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_a_full_disk_while_preparing_keeps_the_old_data(tmp_path, monkeypatch, capsys):
    import importlib

    prepare_module = importlib.import_module("hybridcore.data.prepare")  # the package's `prepare` is the function

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("some text to tokenize " * 50)
    out = tmp_path / "data"
    assert main(["prepare", str(corpus), "--out", str(out), "--quiet", "--workers", "1"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(self, tokens):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.directory / "train_000.bin"))

    monkeypatch.setattr(prepare_module._ShardWriter, "write", full)
    assert main(["prepare", str(corpus), "--out", str(out), "--quiet", "--workers", "1", "--overwrite"]) == EXIT_IO
    error = capsys.readouterr().err
    assert_one_paragraph(error)
    assert f"preparing {out} failed: " in error and "train_000.bin: no space left on the device (ENOSPC)" in error
    assert f"{out} was not changed" in error
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "data"]


def test_a_really_full_tmpfs_while_preparing(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("some text to tokenize " * 20000)  # about 440 KB of tokens at uint16
    with small_tmpfs(tmp_path / "small", 256) as disk:
        assert main(["prepare", str(corpus), "--out", str(disk / "data"), "--quiet", "--workers", "1"]) == EXIT_IO
        error = capsys.readouterr().err
        assert_one_paragraph(error)
        assert f"preparing {disk / 'data'} failed" in error and "(ENOSPC)" in error
        assert os.listdir(disk) == []  # the staging folder went with the failure


def test_an_unreadable_model_in_eval(reference_run, data_dir, monkeypatch, capsys):
    import hybridcore.parallel.checkpoint as parallel_checkpoint

    def failing(path, *args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO), f"{path}/__0_0.distcp")

    monkeypatch.setattr(parallel_checkpoint, "load_sharded", failing)
    assert main(["eval", str(reference_run[0]), "--data", str(data_dir), "--batches", "1"]) == EXIT_IO
    error = capsys.readouterr().err
    assert_one_paragraph(error)
    assert "__0_0.distcp: an input/output error" in error and "(EIO)" in error and "nothing was written" in error
