import os
import subprocess
import sys

import pytest

from hybridcore.data import prepare
from hybridcore.train import TrainConfig, read_metrics, train

# The debug preset shrunk further: a training step takes milliseconds on one CPU core.
TINY = ["d_model=64", "layout=P-", "num_heads=2", "num_kv_heads=1", "head_dim=32", "mamba_n_heads=4",
        "mamba_d_head=16", "mamba_d_state=16", "mamba_chunk_size=16", "d_ff=128", "max_seq_len=512"]


def synthetic_documents(count: int = 48) -> list[str]:
    """Repetitive text with a little variety: easy to learn, so the loss must fall fast."""
    phrases = ["the quick brown fox jumps over the lazy dog. ", "def add(a, b):\n    return a + b\n",
               "hybrid models mix attention and state space layers. ", "0123456789 " * 2]
    return [f"doc {i}: " + phrases[i % 4] * (3 + i % 5) + phrases[(i + 1) % 4] * 2 for i in range(count)]


@pytest.fixture(scope="package")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for i, text in enumerate(synthetic_documents()):
        (root / f"doc_{i:03d}.txt").write_text(text)
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare([root], out, val_fraction=0.1, seed=0, workers=1, progress=False)
    return out


def tiny_train_config(out, data_dir, **changes) -> TrainConfig:
    settings = dict(out=str(out), preset="debug", overrides=list(TINY), data=data_dir and str(data_dir), steps=12,
                    batch_size=4, seq_len=64, lr=3e-3, warmup=3, save_every=4, keep_last=5, eval_every=6,
                    eval_batches=2, progress=False, sample_tokens=0, device="cpu")
    settings.update(changes)
    return TrainConfig(**settings)


def train_cli_args(out, data_dir, steps=12, save_every=4, extra=(), model=TINY) -> list[str]:
    """The command line of tiny_train_config(out, data_dir, steps=..., save_every=..., overrides=model)."""
    args = ["train", "--preset", "debug", "--out", str(out), "--data", str(data_dir), "--steps", str(steps),
            "--batch-size", "4", "--seq-len", "64", "--lr", "3e-3", "--warmup", "3", "--save-every", str(save_every),
            "--keep-last", "5", "--eval-every", "6", "--eval-batches", "2", "--no-progress", "--sample-tokens", "0",
            "--device", "cpu"]
    for item in model:
        args += ["--set", item]
    return args + list(extra)


def run_cli(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hybridcore", *args], capture_output=True, text=True,
                          env=cli_env(), **kwargs)


def cli_env() -> dict:
    """The same thread count as this process: the resume tests compare losses bit for bit."""
    import torch

    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}


def loss_lines(run_dir) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r]


@pytest.fixture(scope="package")
def reference_run(tmp_path_factory, data_dir):
    """An uninterrupted 12-step run, the yardstick of the resume tests."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = train(tiny_train_config(out, data_dir))
    return out, result
