"""Data: tokenizers, document sources, `prepare` (documents -> token shards) and the packed loader."""

from .dataset import TokenDataset, read_meta
from .loader import PackedLoader, validation_batches
from .prepare import DatasetInfo, prepare
from .sources import default_corpus, default_corpus_files, iter_documents
from .tokenizers import ByteTokenizer, HFTokenizer, load_tokenizer, load_tokenizer_from_data_dir, train_bpe

__all__ = ["ByteTokenizer", "HFTokenizer", "train_bpe", "load_tokenizer", "load_tokenizer_from_data_dir",
           "iter_documents", "default_corpus", "default_corpus_files", "prepare", "DatasetInfo", "TokenDataset",
           "read_meta", "PackedLoader", "validation_batches"]
