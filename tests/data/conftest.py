import json
import random

import pytest

from hybridcore.data import ByteTokenizer, prepare

# A few documents with non-ASCII text, several lengths, and one long enough to span rows.
DOCS = ["hello world", "naïve café ✓ 日本語", "x" * 50, "def f():\n    return 1\n",
        "the quick brown fox jumps over the lazy dog " * 4, "short", "émoji 🙂 and more", "z"]


def random_docs(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "über", "naïve", "tokens", "mamba", "attention", "hybrid"]
    return [f"doc {i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for i in range(count)]


def write_jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    return path


def split_documents(dataset) -> list[list[int]]:
    return [dataset.document(i).tolist() for i in range(len(dataset))]


def encoded_with_eos(docs) -> list[list[int]]:
    tok = ByteTokenizer()
    return [tok.encode(d) + [tok.eos_id] for d in docs]


@pytest.fixture
def packed_dir(tmp_path):
    """A prepared byte-level directory of 60 documents, everything in train."""
    source = write_jsonl(tmp_path / "docs.jsonl", random_docs(60))
    out = tmp_path / "data"
    prepare([source], out, val_fraction=0.0, workers=1, progress=False)
    return out
