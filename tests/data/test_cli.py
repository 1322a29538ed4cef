import argparse

from hybridcore.data.cli import add_prepare_arguments, run_prepare

from .conftest import write_jsonl


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser)
    return parser.parse_args(list(argv))


def test_prepare_command(tmp_path, capsys):
    source = write_jsonl(tmp_path / "docs.jsonl", ["one doc", "two docs", "three docs"], field="body")
    out = tmp_path / "out"
    assert run_prepare(parse(str(source), "--out", str(out), "--text-field", "body", "--workers", "1", "--quiet")) == 0
    printed = capsys.readouterr().out
    assert "train: 2 documents" in printed and "val: 1 documents" in printed and str(out) in printed
    assert run_prepare(parse(str(source), "--out", str(out), "--quiet")) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run_prepare(parse(str(source), "--out", str(out), "--text-field", "body", "--overwrite", "--quiet")) == 0
