"""hybridcore.io: the JSON codec, the atomic directory writer with its staging cleanup, the overwrite
guard, and advisory locks that name their holder."""

import fcntl
import json
import math
import os

import pytest

from hybridcore.io import json_codec
from hybridcore.io.files import REPLACED, STAGING, atomic_directory, check_output
from hybridcore.io.lock import FileLock, Holder, Locked, holder_of


def test_non_finite_floats_are_written_as_transformers_writes_them():
    data = {"limit": (0.0, math.inf), "low": -math.inf, "x": [math.nan, 1.5]}
    text = json_codec.dumps(data)
    assert '{"__float__": "Infinity"}' in text and "NaN" in text
    json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in strict JSON"))
    back = json_codec.loads(text)
    assert back["limit"] == [0.0, math.inf] and back["low"] == -math.inf and math.isnan(back["x"][0])


def test_a_failed_write_leaves_the_old_output_whole(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out) as staging:
        (staging / "a.txt").write_text("first")
    with pytest.raises(RuntimeError, match="while writing"):
        with atomic_directory(out, overwrite=True) as staging:
            (staging / "a.txt").write_text("second")
            raise RuntimeError("failed while writing")
    assert (out / "a.txt").read_text() == "first"
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging folder left beside it


def test_a_dead_writers_staging_is_removed_and_a_live_ones_kept(tmp_path, capsys):
    out = tmp_path / "out"
    dead, live = tmp_path / f".out{STAGING}dead0000", tmp_path / f".out{STAGING}live0000"
    dead.mkdir()
    live.mkdir()
    (dead / "shard.bin").write_bytes(b"x" * 100)
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a writer that is still running holds it
    try:
        with atomic_directory(out) as staging:
            (staging / "a.txt").write_text("new")
    finally:
        os.close(fd)
    assert not dead.exists() and live.is_dir() and (out / "a.txt").read_text() == "new"
    assert f"removed {dead}" in capsys.readouterr().err


def test_an_output_moved_aside_by_a_killed_replacement_is_restored(tmp_path):
    aside = tmp_path / f".out{REPLACED}0000"
    aside.mkdir()
    (aside / "a.txt").write_text("the only copy")
    with pytest.raises(ValueError, match="already exists"):
        with atomic_directory(tmp_path / "out"):
            pass
    assert (tmp_path / "out" / "a.txt").read_text() == "the only copy"


def make_run(path):
    (path / "checkpoints" / "step_0000004").mkdir(parents=True)
    (path / "checkpoints" / "step_0000004" / "complete.json").write_text('{"step": 4}')
    (path / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    return path


@pytest.mark.parametrize("output, inputs, words", [
    ("data", ["data"], "it is the input"),
    ("corpus", ["corpus/texts"], "it holds the input"),
    ("corpus/texts/out", ["corpus/texts"], "it lies inside the input"),
    ("run", [], "it is the training run directory"),
    ("run/checkpoints/step_0000004", [], "it lies inside the training run directory"),
    ("runs", [], "it holds the training run directory"),
])
def test_overwrite_refuses_inputs_and_runs(tmp_path, output, inputs, words):
    for name in ("data", "corpus/texts", "corpus/texts/out"):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / name / "f.txt").write_text("keep")
    make_run(tmp_path / "run")
    make_run(tmp_path / "runs" / "a")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=words):
        check_output(tmp_path / output, overwrite=True, inputs=[tmp_path / i for i in inputs])
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    check_output(tmp_path / "elsewhere", overwrite=True, inputs=[tmp_path / i for i in inputs])  # fine


def test_overwrite_of_a_run_in_progress_names_its_holder(tmp_path):
    run = make_run(tmp_path / "run")
    lock = FileLock(run / "run.lock")
    lock.acquire()
    try:
        with pytest.raises(ValueError, match=f"in progress: pid {os.getpid()} on host"):
            check_output(run, overwrite=True)
    finally:
        lock.release()


def test_a_lock_names_its_holder_and_a_dead_holder_is_taken_over(tmp_path):
    path = tmp_path / "run.lock"
    first = FileLock(path)
    assert first.acquire() is None
    assert holder_of(path).pid == os.getpid()
    with pytest.raises(Locked, match=f"locked by pid {os.getpid()}"):
        FileLock(path).acquire()
    first.release()
    assert holder_of(path) is None and path.read_text() == ""  # released: nothing stale left behind
    # a holder killed with -9 leaves its record but not its lock
    path.write_text(json_codec.dumps(vars(Holder("elsewhere", 999999, 0.0, "train"))))
    second = FileLock(path)
    stale = second.acquire()
    assert stale.pid == 999999 and stale.host == "elsewhere"
    assert holder_of(path).pid == os.getpid()
    second.release()


def test_overwrite_with_own_names_replaces_only_a_directory_of_them(tmp_path):
    """With the names a command writes, --overwrite takes a directory holding only those; anything else
    (a stray file, a subdirectory, a file where the directory goes) is refused and left alone."""
    own = ("meta.json", "train_*.bin")
    out = tmp_path / "out"
    out.mkdir()
    (out / "meta.json").write_text("{}")
    (out / "train_000.bin").write_bytes(b"x")
    check_output(out, overwrite=True, own=own)  # an earlier output: fine
    (out / "notes.txt").write_text("mine")
    (out / "sub").mkdir()
    with pytest.raises(ValueError, match=r"it holds notes.txt, sub/, which this command does not write"):
        check_output(out, overwrite=True, own=own)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="it is a file, and this command writes a directory"):
        check_output(tmp_path / "file", overwrite=True, own=own)
    with pytest.raises(ValueError, match="it holds notes.txt"):
        with atomic_directory(out, overwrite=True, own=own) as staging:
            (staging / "meta.json").write_text("{}")
    assert (out / "notes.txt").read_text() == "mine"
