import pytest

from hybridcore.data import ByteTokenizer, HFTokenizer, load_tokenizer, train_bpe

from .conftest import DOCS, random_docs


def test_byte_round_trip_non_ascii():
    tok = ByteTokenizer()
    for text in DOCS + ["", "\x00\n\t", "Ωmega ≠ 𝔘nicode 🙂"]:
        ids = tok.encode(text)
        assert all(0 <= i < 256 for i in ids)
        assert tok.decode(ids) == text
    assert (tok.vocab_size, tok.eos_id, tok.pad_id) == (258, 256, 257)


def test_byte_decode_skips_specials_and_replaces_bad_bytes():
    tok = ByteTokenizer()
    assert tok.decode([104, 256, 105, 257]) == "hi"
    assert tok.decode([0xC3]) == "\ufffd"
    assert tok.encode_array("é").tolist() == tok.encode("é")


def test_train_bpe_vocab_and_round_trip(tmp_path):
    tok = train_bpe(iter(random_docs(200)), 300, tmp_path / "tok" / "tokenizer.json")
    assert tok.vocab_size == 300
    assert tok.eos_id == tok.tokenizer.token_to_id("<|endoftext|>")
    for text in DOCS + random_docs(5, seed=1):
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch(["ab", "über"]) == [tok.encode("ab"), tok.encode("über")]
    # loadable again, from the file or its directory
    again = load_tokenizer(tmp_path / "tok")
    assert isinstance(again, HFTokenizer) and again.encode("naïve") == tok.encode("naïve")
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)


def test_train_bpe_rejects_tiny_vocab(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(["abc"], 100, tmp_path / "tokenizer.json")


def test_hf_tokenizer_without_eos_names_file_and_flag(tmp_path):
    from tokenizers import Tokenizer, models

    path = tmp_path / "tokenizer.json"
    Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")).save(str(path))
    with pytest.raises(ValueError, match="--eos-token") as error:
        HFTokenizer(path)
    assert str(path) in str(error.value)
    assert HFTokenizer(path, eos_token="<unk>").eos_id == 1
    with pytest.raises(ValueError, match="not in its vocabulary"):
        HFTokenizer(path, eos_token="<nope>")


def test_load_tokenizer_bad_path(tmp_path):
    with pytest.raises(ValueError, match="missing-thing"):
        load_tokenizer(tmp_path / "missing-thing")
