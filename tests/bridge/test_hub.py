"""Hub ids resolve through huggingface_hub's cache, laid out here by hand: no network in any test."""

import json

import pytest
from hybridcore.bridge import load_hf, load_model_dir, resolve_model_path
from hybridcore.bridge.hub import looks_like_hub_id
from hybridcore.cli import main

from .conftest import assert_same_logits, save_random_hf

huggingface_hub = pytest.importorskip("huggingface_hub")

REPO = "tiny-org/Falcon-H1-Tiny-Test"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hub cache in tmp_path, offline (a download attempt fails at once)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def cached_snapshot(cache, repo=REPO):
    """The snapshot directory of `repo` at COMMIT, with refs/main pointing at it, as huggingface_hub writes."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    snapshot = storage / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    return snapshot


def test_what_is_an_id():
    assert looks_like_hub_id("tiiuae/Falcon-H1-0.5B-Base") and looks_like_hub_id("org/name.v2")
    assert not any(looks_like_hub_id(text) for text in ("/abs/path", "a/b/c", "name", "./x", "../x", "a/.."))


def test_an_id_loads_imports_and_describes_from_the_cache(hub_cache, tmp_path, capsys):
    snapshot = cached_snapshot(hub_cache)
    reference = save_random_hf(snapshot)
    assert resolve_model_path(REPO) == str(snapshot)
    assert_same_logits(reference, load_hf(REPO))

    assert main(["info", REPO, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layout"] == "P-P-"
    assert main(["import-hf", REPO, str(tmp_path / "model")]) == 0
    assert f"imported {REPO}" in capsys.readouterr().out
    assert_same_logits(reference, load_model_dir(str(tmp_path / "model")))

    from hybridcore.io.load import load_model, open_source  # what --init-hf, eval and generate read

    assert open_source(REPO).config == load_hf(REPO).config
    assert_same_logits(reference, load_model(REPO))


def test_info_needs_only_the_config_and_load_says_what_is_missing(hub_cache, tmp_path):
    snapshot = cached_snapshot(hub_cache)
    save_random_hf(tmp_path / "full")
    (snapshot / "config.json").write_text((tmp_path / "full" / "config.json").read_text())
    assert main(["info", REPO]) == 0
    with pytest.raises(ValueError, match=rf"'{REPO}' is not a local directory, and as a Hub id it is not \(wholly\) "
                                         rf"in the Hub cache \({hub_cache}\) while HF_HUB_OFFLINE is set"):
        load_hf(REPO)


def test_a_missing_id_is_named_offline_and_online(hub_cache, monkeypatch, capsys):
    with pytest.raises(ValueError, match=r"'nobody/nothing' is not a local directory.*HF_HUB_OFFLINE is set: "
                                         r"download it first"):
        load_hf("nobody/nothing")
    assert main(["info", "nobody/nothing"]) == 2
    assert "nobody/nothing" in capsys.readouterr().err

    # online, with a Hub that refuses connections at once
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ValueError, match=rf"'nobody/nothing' is not a local directory, and as a Hub id it is neither "
                                         rf"in the Hub cache \({hub_cache}\) nor reachable"):
        load_hf("nobody/nothing")


def test_an_existing_local_path_wins_over_the_id_it_looks_like(hub_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reference = save_random_hf(tmp_path / "org" / "name")
    assert resolve_model_path("org/name") == "org/name"
    assert_same_logits(reference, load_hf("org/name"))
    with pytest.raises(ValueError, match="is not a directory"):
        load_hf(str(tmp_path / "org" / "name" / "config.json"))
