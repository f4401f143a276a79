"""Tokenizers for the bundle: read `tokenizer.json`, SentencePiece `tokenizer.model` or llama2.c
`tok*.bin`, and produce one Hugging Face `tokenizers.Tokenizer` that encodes like the original.

A `tokenizer.json` is loaded by transformers (AutoTokenizer, with the checkpoint's configs and
GenerationConfig), so ids, special tokens and chat template are what transformers gives. A
SentencePiece BPE model (Llama-2's `tokenizer.model`) goes through transformers' converter
(`SpmConverter`), as `LlamaTokenizerFast(from_slow=True)` does; a llama2.c `tok*.bin`, which no
library reads, is turned back into the SentencePiece model it was exported from first. The
converted tokenizer's post-processor adds BOS; `encode(text, add_special_tokens=False)` gives the
bare pieces (the board prepends BOS itself).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, processors

from host.chat_source import ChatSource, chat_source, detect_template, transformers_chat_source
from host.errors import InputError, first_line
from host.llama2c import Vocab, read_tokenizer as read_llama2c_tokenizer

# Tried in order when no tokenizer config names the special tokens.
BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>")
EOS_NAMES = ("</s>", "<|end_of_text|>", "<eos>")


@dataclass(frozen=True)
class TokenizerBundle:
    tokenizer: Tokenizer
    bos_id: int
    eos_id: int
    pad_id: int  # eos_id when the tokenizer defines no pad token
    add_bos: bool
    vocab_size: int  # including added tokens
    chat_template: str  # "zephyr" | "llama2" | "chatml" | "none"
    source: str  # the file it was read from
    chat: ChatSource = ChatSource()  # the model's own template and stop ids (host/chat_source.py)


# --- SentencePiece model -> tokenizers.Tokenizer ---------------------------------------------
def spm_tokenizer(proto) -> Tokenizer:
    """The tokenizers equivalent of a SentencePiece BPE model (transformers' converter); BOS added.

    Unknown and control pieces become special tokens, so a rendered chat template's "</s>" is EOS."""
    from transformers.convert_slow_tokenizer import SpmConverter

    kinds = proto.SentencePiece.Type
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto, {p.piece: i for i, p in enumerate(proto.pieces)})
    tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                            for p in proto.pieces if p.type in (kinds.UNKNOWN, kinds.CONTROL)])
    set_bos_post_processor(tok, proto.trainer_spec.bos_id)
    return tok


def llama2c_proto(vocab: Vocab):
    """The SentencePiece model a llama2.c vocabulary was exported from: BPE, byte fallback, dummy prefix."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    kinds = proto.SentencePiece.Type
    named = {vocab.unk_id: kinds.UNKNOWN, vocab.bos_id: kinds.CONTROL, vocab.eos_id: kinds.CONTROL}
    for i, (piece, score) in enumerate(zip(vocab.pieces, vocab.scores)):
        kind = named.get(i, kinds.BYTE if _is_byte_piece(piece) else kinds.NORMAL)
        proto.pieces.add(piece=piece, score=score, type=kind)
    trainer, spec = proto.trainer_spec, proto.normalizer_spec
    trainer.model_type, trainer.byte_fallback = trainer.BPE, True
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = vocab.unk_id, vocab.bos_id, vocab.eos_id, -1
    spec.name, spec.add_dummy_prefix, spec.escape_whitespaces, spec.remove_extra_whitespaces = "identity", True, True, False
    return proto


def _is_byte_piece(piece: str) -> bool:
    return len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")


def set_bos_post_processor(tok: Tokenizer, bos_id: int) -> None:
    """Make `encode(..., add_special_tokens=True)` prepend BOS, as SentencePiece Llama does."""
    bos = tok.id_to_token(bos_id)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
    )


# --- readers, one per format -----------------------------------------------------------------
def from_llama2c(path: Path) -> TokenizerBundle:
    """llama2.c's binary tokenizer (`tok512.bin`): <unk> 0, <s> 1, </s> 2, then bytes and pieces."""
    vocab = read_llama2c_tokenizer(path)
    return _bundle(spm_tokenizer(llama2c_proto(vocab)), vocab.bos_id, vocab.eos_id, None, True, path)


def from_sentencepiece(path: Path) -> TokenizerBundle:
    """A SentencePiece BPE `tokenizer.model` (identity normaliser, as Llama's)."""
    proto = _read_sentencepiece_proto(path)
    spec, trainer = proto.normalizer_spec, proto.trainer_spec
    if trainer.model_type != trainer.BPE or spec.name not in ("identity", "") or spec.remove_extra_whitespaces:
        raise InputError(
            f"{path}: only SentencePiece BPE models with the identity normaliser (Llama-style) are converted; "
            "pass the model's tokenizer.json instead"
        )
    if not trainer.byte_fallback:
        raise InputError(f"{path}: SentencePiece model without byte fallback is not supported; pass its tokenizer.json")
    if min(trainer.bos_id, trainer.eos_id) < 0:
        raise InputError(f"{path}: the SentencePiece model defines no BOS/EOS piece; pass a tokenizer.json")
    pad = trainer.pad_id if trainer.pad_id >= 0 else None
    directory = Path(path).parent
    config = _hf_tokenizer_config(directory)  # an HF directory's chat template applies to its tokenizer.model too
    add_bos = bool(config.get("add_bos_token", True))
    return _bundle(spm_tokenizer(proto), trainer.bos_id, trainer.eos_id, pad, add_bos, path, directory, config)


def _read_sentencepiece_proto(path: Path):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(path).read_bytes())
    except Exception as e:  # protobuf raises DecodeError and friends
        raise InputError(f"{path}: not a SentencePiece model ({e}); pass a tokenizer.model, tokenizer.json or tok<vocab>.bin") from None
    if not proto.pieces:
        raise InputError(f"{path}: not a SentencePiece model (no pieces); pass a tokenizer.model, tokenizer.json or tok<vocab>.bin")
    return proto


def from_tokenizer_json(path: Path) -> TokenizerBundle:
    """A Hugging Face `tokenizer.json`, loaded by transformers with the configs and generation_config.json beside it."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    directory = Path(path).parent
    try:
        # AutoTokenizer reads a directory's tokenizer.json; a file of another name is a bare tokenizer
        hf = (AutoTokenizer.from_pretrained(directory) if Path(path).name == "tokenizer.json"
              else PreTrainedTokenizerFast(tokenizer_file=str(path)))
    except Exception as e:  # the Rust side and transformers raise plain Exception, ValueError, OSError, TypeError
        raise InputError(f"{path}: not a readable tokenizer.json ({first_line(e)}); re-download it or pass tokenizer.model") from None
    return from_transformers(hf, read_generation_config(directory), str(path), directory)


def from_transformers(hf, generation_config, where: str, directory: Path | None = None) -> TokenizerBundle:
    """The record of a tokenizer transformers loaded (a checkpoint's, or a GGUF's); InputError without EOS."""
    tok = hf.backend_tokenizer
    bos = hf.bos_token_id if hf.bos_token_id is not None else _special_id(tok, None, BOS_NAMES)
    eos = hf.eos_token_id if hf.eos_token_id is not None else _special_id(tok, None, EOS_NAMES)
    if eos is None:
        raise InputError(f"{where}: cannot tell the EOS token; put the model's tokenizer_config.json (eos_token) beside it")
    bos = eos if bos is None else bos  # a model without BOS (Qwen, some GGUFs) never gets one: add_bos is False
    chat = transformers_chat_source(hf, generation_config, directory)
    return TokenizerBundle(
        tokenizer=tok,
        bos_id=bos,
        eos_id=eos,
        pad_id=eos if hf.pad_token_id is None else hf.pad_token_id,
        add_bos=tok.encode("a").ids[:1] == [bos],  # what transformers' own encode does
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        chat_template=detect_template(chat.jinja),
        chat=chat,
        source=where,
    )


def read_generation_config(directory: Path):
    """transformers' GenerationConfig of a checkpoint directory; None when it has no generation_config.json."""
    from transformers import GenerationConfig

    path = Path(directory) / "generation_config.json"
    if not path.is_file():
        return None
    try:
        return GenerationConfig.from_pretrained(directory)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable generation config ({first_line(e)}); fix or remove it") from None


def _bundle(tok, bos, eos, pad, add_bos, path, directory: Path | None = None, config: dict | None = None) -> TokenizerBundle:
    """The record of a converted tokenizer; chat template and stop ids from the checkpoint `directory`, if any."""
    generation = read_generation_config(directory) if directory is not None else None
    chat = chat_source(directory, tok, config or {}, eos, generation)
    return TokenizerBundle(
        tokenizer=tok,
        bos_id=bos,
        eos_id=eos,
        pad_id=eos if pad is None else pad,
        add_bos=add_bos,
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        chat_template=detect_template(chat.jinja),
        chat=chat,
        source=str(path),
    )


# --- a SentencePiece model's tokenizer_config.json ---------------------------------------------
def _hf_tokenizer_config(directory: Path) -> dict:
    """tokenizer_config.json merged over special_tokens_map.json; {} when neither exists (tokenizer.model only:
    transformers has no loader for a SentencePiece model beside a config without converting it itself)."""
    merged = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = directory / name
        if f.is_file():
            try:
                merged.update(json.loads(f.read_text()))
            except ValueError as e:
                raise InputError(f"{f}: not valid JSON ({e}); fix or remove it") from None
    return merged


def _special_id(tok: Tokenizer, entry, fallbacks) -> int | None:
    """Id of a special token given as text or {"content": text}, else of the first known fallback name."""
    if isinstance(entry, dict):
        entry = entry.get("content")
    for name in ([entry] if entry else []) + list(fallbacks):
        token_id = tok.token_to_id(name)
        if token_id is not None:
            return token_id
    return None


# --- entry points ----------------------------------------------------------------------------
def default_tokenizer_path(model_dir: Path | None, vocab_size: int | None) -> Path:
    """The tokenizer beside a model: tokenizer.json, tokenizer.model or llama2.c's tok<vocab>.bin."""
    names = ["tokenizer.json", "tokenizer.model"] + ([f"tok{vocab_size}.bin"] if vocab_size else [])
    for name in names if model_dir else []:
        if (Path(model_dir) / name).is_file():
            return Path(model_dir) / name
    where = f"in {model_dir} " if model_dir else ""
    raise InputError(f"no tokenizer found {where}(looked for {', '.join(names)}); pass --tokenizer PATH")


def load_tokenizer(spec: str | None, model_dir: Path | None = None, vocab_size: int | None = None) -> TokenizerBundle:
    """Read a tokenizer from a path (file or directory), or find the default one beside the model."""
    path = Path(spec) if spec else default_tokenizer_path(model_dir, vocab_size)
    if path.is_dir():
        path = default_tokenizer_path(path, vocab_size)
    if not path.is_file():
        raise InputError(f"{path}: no such tokenizer file; pass a tokenizer.json, tokenizer.model or tok<vocab>.bin")
    if path.suffix == ".json":
        return from_tokenizer_json(path)
    if path.suffix == ".model":
        return from_sentencepiece(path)
    if path.suffix == ".bin":
        return from_llama2c(path)
    raise InputError(f"{path}: unknown tokenizer format; pass a tokenizer.json, tokenizer.model or llama2.c tok<vocab>.bin")


def check_vocab(bundle: TokenizerBundle, model_vocab_size: int, model_path) -> None:
    """InputError unless every token id the tokenizer can produce has a row in the model."""
    # the largest id, not the count: an added token may sit far past the others
    top = max(bundle.tokenizer.get_vocab(with_added_tokens=True).values(), default=bundle.vocab_size - 1)
    ids = (top, bundle.vocab_size - 1, bundle.bos_id, bundle.eos_id, bundle.pad_id)
    # Embeddings are often padded past the tokenizer (e.g. to a multiple of 64); more is a mismatch.
    if max(ids) >= model_vocab_size or model_vocab_size - bundle.vocab_size >= 256:
        raise InputError(
            f"tokenizer {bundle.source} has {bundle.vocab_size} tokens but model {model_path} has a vocabulary "
            f"of {model_vocab_size}; pass the model's own tokenizer with --tokenizer"
        )
