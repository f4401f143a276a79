"""Streaming detokenization (tokenizers' DecodeStream): whole characters only, the same text as a full
decode, stop strings never shown."""
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from board.detokenize import StopFilter, TextStream
from board.manifest import read_manifest
from board.tokenizer import Tokenizer as BoardTokenizer


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
    stream = TextStream(byte_tokenizer)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "\ufffd" not in "".join(pieces) and "".join(pieces) == TEXT
    # the 4-byte emoji appears in one piece, on its last byte
    emoji_end = len("héllo wörld 🙂".encode("utf-8")) - 1
    assert pieces[emoji_end].endswith("🙂") and pieces[emoji_end - 1] == ""


def test_context_ids_are_not_repeated_and_a_cut_character_flushes_as_a_full_decode_does(byte_tokenizer):
    ids = byte_tokenizer.encode("ab cd 🙂").ids
    stream = TextStream(byte_tokenizer, context_ids=ids[:2])
    assert "".join(stream.push(i) for i in ids[2:-1]) == " cd "  # the emoji's last byte never came
    assert stream.flush() == byte_tokenizer.decode(ids[6:-1]) == "\ufffd"


@pytest.fixture(scope="module")
def stories_tokenizer(stories_bundle):
    """stories260K's tokenizer as its bundle carries it: SentencePiece BPE, 512 pieces, byte fallback."""
    return BoardTokenizer(stories_bundle / "tokenizer.json", read_manifest(stories_bundle).tokens)


STORIES_TEXTS = ["Once upon a time, Lily saw a big red ball.", "naïve café — “quotes” 日本語 😀🤖 x", "  two  spaces\nand a line"]


@pytest.mark.parametrize("text", STORIES_TEXTS, ids=["words", "emoji-cjk-bytes", "spaces"])
def test_stories260k_stream_equals_the_full_decode_byte_for_byte(stories_tokenizer, text):
    ids = stories_tokenizer.encode(text)
    assert len(ids) > 5
    stream = stories_tokenizer.stream()
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces).encode() == stories_tokenizer.decode(ids).encode()
    assert all("\ufffd" not in p for p in pieces)
    # after a prompt the answer keeps the space SentencePiece puts before its first word
    prompt = stories_tokenizer.encode("The end.", bos=True)
    stream = stories_tokenizer.stream(context_ids=prompt[-4:])
    cont = "".join(stream.push(i) for i in ids) + stream.flush()
    assert stories_tokenizer.decode(prompt + ids) == stories_tokenizer.decode(prompt) + cont


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
