"""Streaming detokenization: whole characters only, stop strings never shown."""
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from board.detokenize import REPLACEMENT, StopFilter, StreamDecoder


@pytest.fixture(scope="module")
def byte_tokenizer():
    """A byte-level tokenizer with no merges: every UTF-8 byte is its own token."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(sorted(alphabet))}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


TEXT = "héllo wörld 🙂 — 日本"


def test_byte_stream_never_emits_half_a_character(byte_tokenizer):
    ids = byte_tokenizer.encode(TEXT).ids
    assert len(ids) == len(TEXT.encode("utf-8"))  # one token per byte: multi-byte chars span tokens
    decoder = StreamDecoder(byte_tokenizer.decode)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert all(REPLACEMENT not in p for p in pieces)
    assert "".join(pieces) == TEXT
    # the 4-byte emoji appears in one piece, on its last byte
    emoji_end = len("héllo wörld 🙂".encode("utf-8")) - 1
    assert pieces[emoji_end].endswith("🙂") and pieces[emoji_end - 1] == ""


def test_context_ids_are_not_repeated(byte_tokenizer):
    ids = byte_tokenizer.encode("ab cd").ids
    decoder = StreamDecoder(byte_tokenizer.decode, context_ids=ids[:2])
    assert "".join(decoder.push(i) for i in ids[2:]) + decoder.flush() == " cd"


def test_stop_string_is_never_shown_even_across_pieces():
    stop = StopFilter(["<|user|>"])
    out = [stop.push(p) for p in ["Hi the", "re <|us", "er|> more"]]
    assert out == ["Hi the", "re ", ""]
    assert stop.stopped and stop.flush() == ""


def test_a_false_start_of_a_stop_string_is_released():
    stop = StopFilter(["</s>", "User:"])
    assert stop.push("a </") == "a "
    assert stop.push("b> U") == "</b> "
    assert stop.push("sed") == "Used"
    assert not stop.stopped
    assert stop.push(" Us") == " " and stop.flush() == "Us"
