"""Packing documents into fixed-length training rows, deterministically and resumably.

Each epoch shuffles the documents (seeded by (seed, epoch)), concatenates them (each already ends in
EOS) into one stream and cuts it into back-to-back rows of seq_len + 1 tokens; the tail shorter than a
row is dropped. A row gives `input_ids = row[:-1]`, `labels = row[1:]`, so the EOS that ends one
document predicts the next document's first token, as in GPT-style pretraining.

The rows of an epoch are then visited in a seeded random order too (shuffle=True), so the rows of one
batch come from all over the corpus rather than from one long document.

Global batch g of an epoch is rows [g * B * W, (g + 1) * B * W) of that order for batch_size B and world_size W;
rank r takes the r-th block of B rows. The row order therefore never depends on W: W ranks together
see exactly the rows one process would see with batch_size B * W.

`seq_idx[b, t]` numbers the documents inside a row: 0 at the row's first token, +1 at the first token
after each EOS (a document start), so an EOS belongs to the document it ends. Boundaries come from
the document index, not from token values, so an EOS id inside a document's text cannot split it.
"""

from __future__ import annotations

import numpy as np
import torch

from .dataset import TokenDataset


class PackedLoader:
    """Iterator of {"input_ids": [B, L] long, "labels": [B, L] long, "seq_idx": [B, L] int32 | None}.

    doc_boundaries=False gives seq_idx=None (the model then treats each row as one sequence).
    epochs=None iterates forever. drop_last=True (training) yields only full global batches;
    drop_last=False also yields the last partial one, where a rank may receive fewer rows, even zero
    (shape [0, L]), so every rank still steps the same number of times.
    shuffle=False keeps the stored document order (used for validation).
    """

    def __init__(self, dataset: TokenDataset, batch_size: int, seq_len: int, seed: int = 0,
                 doc_boundaries: bool = True, drop_last: bool = True, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, epochs: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        if seq_len < 1:
            raise ValueError(f"seq_len: must be >= 1, got {seq_len}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank: must be in [0, world_size={world_size}), got {rank}")
        self.dataset, self.batch_size, self.seq_len = dataset, batch_size, seq_len
        self.seed, self.doc_boundaries, self.drop_last, self.shuffle = seed, doc_boundaries, drop_last, shuffle
        self.rank, self.world_size, self.epochs = rank, world_size, epochs
        self.row_tokens = seq_len + 1
        self.global_rows = batch_size * world_size
        self.rows_per_epoch = dataset.num_tokens // self.row_tokens
        if self.batches_per_epoch == 0:
            raise ValueError(f"{dataset.data_dir} ({dataset.split}): {dataset.num_tokens} tokens do not fill one "
                             f"global batch of {self.global_rows} rows x {self.row_tokens} tokens (--batch-size "
                             f"{self.global_rows}, --seq-len {seq_len}); lower them or prepare more data")
        self.epoch, self.row = 0, 0  # position: next global row to yield, within `epoch`
        self._order_epoch = None

    @property
    def batches_per_epoch(self) -> int:
        full, extra = divmod(self.rows_per_epoch, self.global_rows)
        return full + (1 if extra and not self.drop_last else 0)

    # --- resumable position ---
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "row": self.row, "seed": self.seed, "seq_len": self.seq_len,
                "shuffle": self.shuffle, "num_tokens": self.dataset.num_tokens}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "seq_len", "shuffle", "num_tokens"):
            if key in state and state[key] != mine[key]:
                what = (f"{self.dataset.data_dir} has changed since the checkpoint ({self.dataset.split}: "
                        f"{state[key]:,} tokens then, {mine[key]:,} now)" if key == "num_tokens" else
                        f"the checkpoint's loader has {key}={state[key]!r}, this one {mine[key]!r}")
                raise ValueError(f"{what}: resuming would change the data order. Resume with the data the run "
                                 f"trained on, or start a new --out on this data (--init-hf takes the run's "
                                 f"weights)")
        self.epoch, self.row = int(state["epoch"]), int(state["row"])

    # --- iteration ---
    def __iter__(self) -> "PackedLoader":
        return self

    def __next__(self) -> dict:
        if self.row >= self.rows_per_epoch or (self.drop_last and self.row + self.global_rows > self.rows_per_epoch):
            self.epoch, self.row = self.epoch + 1, 0
        if self.epochs is not None and self.epoch >= self.epochs:
            raise StopIteration
        end = min(self.row + self.global_rows, self.rows_per_epoch)
        mine = range(min(end, self.row + self.rank * self.batch_size),
                     min(end, self.row + (self.rank + 1) * self.batch_size))
        batch = self._batch(self.epoch, mine)
        self.row = end  # advance before handing the batch out: state_dict() then means "after it"
        return batch

    def _epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(document ids, stream start, stream end) of the epoch's concatenated order, and the order in
        which its rows are visited; cached."""
        if self._order_epoch != epoch:
            starts, lengths = self.dataset.documents
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(len(starts))
            else:
                order = np.arange(len(starts))
            ends = np.cumsum(lengths[order])
            rows = (np.random.default_rng([self.seed, epoch, 1]).permutation(self.rows_per_epoch) if self.shuffle
                    else np.arange(self.rows_per_epoch))
            self._order = (order, ends - lengths[order], ends, rows)
            self._order_epoch = epoch
        return self._order

    def row_order(self, epoch: int) -> np.ndarray:
        """The stream rows of `epoch` in the order they are yielded (identity without shuffle)."""
        return self._epoch_order(epoch)[3]

    def _row(self, epoch: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens of one row and each token's document number within the row."""
        order, doc_starts, doc_ends, _ = self._epoch_order(epoch)
        begin, end = row * self.row_tokens, (row + 1) * self.row_tokens
        tokens = np.empty(self.row_tokens, dtype=np.int64)
        docs = np.empty(self.row_tokens, dtype=np.int32)
        k = int(np.searchsorted(doc_ends, begin, side="right"))  # first document ending after `begin`
        position, number = begin, 0
        while position < end:
            take = min(end, int(doc_ends[k])) - position
            source = int(self.dataset.starts[order[k]]) + position - int(doc_starts[k])
            tokens[position - begin:position - begin + take] = self.dataset.read(source, source + take)
            docs[position - begin:position - begin + take] = number
            position, k, number = position + take, k + 1, number + 1
        return tokens, docs

    def _batch(self, epoch: int, rows: range) -> dict:
        visit = self.row_order(epoch)
        pairs = [self._row(epoch, int(visit[r])) for r in rows]
        tokens = np.stack([t for t, _ in pairs]) if pairs else np.empty((0, self.row_tokens), dtype=np.int64)
        docs = np.stack([d for _, d in pairs]) if pairs else np.empty((0, self.row_tokens), dtype=np.int32)
        tokens = torch.from_numpy(tokens)
        return {"input_ids": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous(),
                "seq_idx": torch.from_numpy(docs[:, :-1].copy()) if self.doc_boundaries else None}


def validation_batches(dataset: TokenDataset, batch_size: int, seq_len: int, max_batches: int | None = None,
                       doc_boundaries: bool = True, rank: int = 0, world_size: int = 1) -> list[dict]:
    """A fixed list of up to `max_batches` batches: documents in stored order, no shuffle, one pass.

    The same on every call and for every seed. Returns [] when the split is too small for one row."""
    if dataset.num_tokens < seq_len + 1:
        return []
    loader = PackedLoader(dataset, batch_size, seq_len, doc_boundaries=doc_boundaries, drop_last=False,
                          shuffle=False, rank=rank, world_size=world_size, epochs=1)
    batches = []
    for batch in loader:
        if max_batches is not None and len(batches) >= max_batches:
            break
        batches.append(batch)
    return batches
