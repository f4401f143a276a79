"""The bundle manifest: the one contract between host (writes it) and board (reads it).

A bundle is a directory holding `manifest.json` plus the files it lists (see docs/design.md §2).
This module defines the manifest's typed form, reads and validates it, checks every file's
sha256, and writes it. It needs only the standard library, so the board can always import it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

from board.ortneeds import version_tuple

# What each version changed, why, and what an older board does: docs/bundle-format.md.
FORMAT_VERSION = 8
SUPPORTED_FORMAT_VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8)  # older versions load with the new fields at their defaults
MANIFEST_NAME = "manifest.json"


class BundleError(Exception):
    """A bundle is missing, malformed or corrupt; the message names the file and the fix."""


@dataclass(frozen=True)
class Arch:
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "int64", "float32", "float16"
    shape: list  # ints, or a symbol such as "S" for the prefill chunk length


@dataclass(frozen=True)
class Graph:
    kv_len: int  # fixed number of KV slots
    kv_dtype: str  # "float32" | "float16"
    prefill_chunks: list  # chunk lengths S the compiled graph accepts; always includes 1
    inputs: list  # [TensorSpec]
    outputs: list  # [TensorSpec]
    logits: str = "all"  # "all": [1, S, V]; "index": [1, N, V], the rows input logits_index names
    onnx: str = "model.onnx"
    om: str | None = None  # set when ATC compiled the graph
    om_soc: str | None = None  # the chip the .om was compiled for (Ascend310B1 = 20T, Ascend310B4 = 8T)
    om_cann: str | None = None  # the CANN version ATC came from; the .om loads on that or a newer CANN
    opset: int = 17
    compute_dtype: str = "float32"  # activations, norms and attention ("float16": the Ascend default)
    cache: str = "slots"  # "slots": docs/design.md §3; "inplace": one past/present buffer per layer, a prefix (host/gqa.py)
    max_positions: int | None = None  # positions the graph rotates when fewer than the model's (capped rotary tables)
    min_onnxruntime: str | None = None  # lowest onnxruntime release that runs the graph; None: unknown (format < 6)
    onnxruntime_ops: dict = field(default_factory=dict)  # operator form in the graph -> lowest release that runs it


CACHE_LAYOUTS = ("slots", "inplace")
LOGITS_ROWS = ("all", "index")
QuantScheme = Literal["none", "w8a8"]
Dialect = Literal["nbits8", "u8u8", "s8s8"]  # W8A8 integer layout: nbits8/u8u8 for onnxruntime CPU, s8s8 for the Ascend plugin
ActScheme = Literal["dynamic", "static"]  # activation scales per token at run time, or per tensor from calibration
QUANT_SCHEMES: tuple = get_args(QuantScheme)
DIALECTS: tuple = get_args(Dialect)
ACT_SCHEMES: tuple = get_args(ActScheme)
ACTIVATIONS = {"dynamic": "int8_per_token_dynamic", "static": "int8_per_tensor_static"}  # ActScheme -> manifest name
# nbits8 quantizes activations inside onnxruntime's MatMulNBits, per block of 128, 64 or 32 features (host/nbits.py)
NBITS_ACTIVATIONS = "int8_per_block_dynamic"


@dataclass(frozen=True)
class Quantization:
    scheme: str = "none"  # a QuantScheme (typed as str: the manifest reader checks JSON types by annotation)
    dialect: str | None = None  # a Dialect
    weights: str | None = None  # "int8_per_channel_symmetric"
    activations: str | None = None  # a value of ACTIVATIONS
    smooth_alpha: float | None = None
    quantized_layers: int = 0


@dataclass(frozen=True)
class Tokens:
    bos_id: int
    eos_id: int
    pad_id: int
    add_bos: bool = True
    stop_strings: list = field(default_factory=list)  # text that ends an answer beyond the EOS id (never shown)
    stop_ids: list = field(default_factory=list)  # ids that end an answer besides eos_id (generation_config, end of turn)


@dataclass(frozen=True)
class ChatTemplate:
    """How to render a conversation: Jinja source, rendered as transformers does (board/jinja_template.py)."""

    name: str  # the family it renders like (zephyr, llama2, chatml, none), for `board info`
    jinja: str = ""  # the model's own template, or the built-in one of its family (board/chat_templates/)
    source: str = "builtin"  # where it came from: tokenizer_config.json, chat_template.jinja, gguf, or builtin
    special_tokens: dict = field(default_factory=dict)  # bos_token, eos_token, ... as the template sees them


@dataclass(frozen=True)
class Sampling:
    """The model's own sampling defaults (generation_config.json); None where it says nothing."""

    temperature: float | None = None  # 0: greedy (generation_config's do_sample false)
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None


BUILTIN_TEMPLATES = ("zephyr", "llama2", "chatml", "none")
TEMPLATES_DIR = Path(__file__).with_name("chat_templates")
# the rule fields a format <= 7 manifest kept beside the Jinja source
_RULE_FIELDS = ("system", "system_in_user", "user", "assistant", "generation_prompt", "default_system", "stop_strings")


def builtin_chat_template(name: str) -> ChatTemplate:
    """The built-in template of a family (board/chat_templates/NAME.jinja), for a model that has none."""
    if name not in BUILTIN_TEMPLATES:
        raise BundleError(f"no built-in chat template {name!r}; use one of {', '.join(BUILTIN_TEMPLATES)}")
    return ChatTemplate(name=name, jinja=(TEMPLATES_DIR / f"{name}.jinja").read_text(encoding="utf-8"))


def _chat_template(data, version: int, where: str) -> ChatTemplate:
    """The manifest's chat template; before format 8 a rule-named one without Jinja gets its built-in file."""
    if version >= 8 or not isinstance(data, dict):
        return _build(ChatTemplate, data, where)
    kept = _build(ChatTemplate, {k: v for k, v in data.items() if k not in _RULE_FIELDS}, where)
    if kept.jinja:
        return kept
    try:
        return replace(builtin_chat_template(kept.name), source=kept.source, special_tokens=kept.special_tokens)
    except BundleError as e:
        raise BundleError(f"{where}: {e}; rebuild the bundle") from None


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    model: dict  # {"name": ..., "source": ...}
    arch: Arch
    graph: Graph
    quantization: Quantization
    tokens: Tokens
    chat_template: ChatTemplate
    files: dict  # {relative path: FileEntry}
    tokenizer: str = "tokenizer.json"
    sampling: Sampling = field(default_factory=Sampling)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ITEM_BYTES = {"float32": 4, "float16": 2, "int64": 8, "int32": 4, "int8": 1, "uint8": 1}  # numpy dtype names


def dim_symbols(manifest: Manifest) -> dict[str, int]:
    """Symbol values a manifest shape may use, besides S (the chunk length) and N (rows given logits, at most S)."""
    a, g = manifest.arch, manifest.graph
    return {"L": a.num_layers, "Hkv": a.num_kv_heads, "KV": g.kv_len, "D": a.head_dim, "V": a.vocab_size}


def eval_dim(dim, symbols: dict[str, int], s: int) -> int:
    """Value of one shape entry (an int, or a sum such as "KV+S") at chunk length s."""
    if isinstance(dim, int):
        return dim
    total = 0
    for term in str(dim).replace(" ", "").split("+"):
        if term in ("S", "N"):
            total += s
        elif term in symbols:
            total += symbols[term]
        elif term.lstrip("-").isdigit():
            total += int(term)
        else:
            raise BundleError(f"manifest shape entry {dim!r}: unknown symbol {term!r}; rebuild the bundle")
    return total


def tensor_bytes(spec: TensorSpec, symbols: dict[str, int], s: int) -> int:
    """Bytes of one graph input or output at chunk length s."""
    n = ITEM_BYTES[spec.dtype]
    for dim in spec.shape:
        n *= eval_dim(dim, symbols, s)
    return n


def run_bytes(manifest: Manifest) -> dict:
    """What running the graph holds beside its weights: the KV cache ("kv": the past inputs) and the outputs of the
    largest prefill chunk ("outputs": the buffers a backend sizes for its largest gear)."""
    g, symbols = manifest.graph, dim_symbols(manifest)
    top = max(g.prefill_chunks)
    kv = sum(tensor_bytes(t, symbols, top) for t in g.inputs if t.name.startswith("past_key_values"))
    return {"kv": kv, "outputs": sum(tensor_bytes(t, symbols, top) for t in g.outputs)}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB weights never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entries(bundle_dir: Path, names: list[str]) -> dict[str, FileEntry]:
    """Size and sha256 of each named file of a bundle."""
    bundle_dir = Path(bundle_dir)
    return {n: FileEntry(size=(bundle_dir / n).stat().st_size, sha256=sha256_file(bundle_dir / n)) for n in names}


# JSON types a manifest field may hold, by its annotation (bool is never taken for int or float)
_JSON_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list,),
               "dict": (dict,), "None": (type(None),)}
_SHA256 = re.compile("[0-9a-f]{64}")
MAX_POSITIONS = 1 << 22  # no model has a longer context; larger values are damage, not a model


def _build(cls, data: Any, where: str):
    """cls(**data) once data is a JSON object whose fields have the types `cls` declares."""
    section = cls.__name__
    if not isinstance(data, dict):
        raise BundleError(f"{where}: {section} must be a JSON object, not {type(data).__name__}; rebuild the bundle")
    for f in fields(cls):
        value = data.get(f.name)
        allowed = tuple(t for name in f.type.split(" | ") for t in _JSON_TYPES[name])
        if f.name in data and ((isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed)):
            raise BundleError(f"{where}: {section}.{f.name} = {str(value)[:40]!r} is not of type {f.type}; rebuild the bundle")
    try:
        return cls(**data)
    except TypeError as e:
        raise BundleError(f"{where}: {e}; rebuild the bundle with a matching edge-llm version") from None


def _sampling_ok(s: Sampling) -> bool:
    ok = {"temperature": lambda v: 0 <= v < math.inf, "top_k": lambda v: v >= 0, "top_p": lambda v: 0 < v <= 1,
          "repetition_penalty": lambda v: 0 < v < math.inf}  # NaN fails every comparison
    return all(getattr(s, name) is None or check(getattr(s, name)) for name, check in ok.items())


def _check_ranges(m: Manifest, where: str) -> None:
    """Values a well-formed manifest can hold; BundleError for the first that is out of range."""
    a, g = m.arch, m.graph
    checks = [
        (all(getattr(a, f.name) >= 1 for f in fields(Arch) if f.type == "int"), "arch sizes must be >= 1"),
        (a.max_position_embeddings <= MAX_POSITIONS, f"arch.max_position_embeddings must be <= {MAX_POSITIONS}"),
        (g.max_positions is None or 1 <= g.max_positions <= a.max_position_embeddings,
         "graph.max_positions must be in 1..max_position_embeddings"),
        (1 <= g.kv_len <= (g.max_positions or a.max_position_embeddings),
         f"graph.kv_len {g.kv_len} must be in 1..max_position_embeddings (graph.max_positions when set)"),
        (all(isinstance(c, int) and 1 <= c <= g.kv_len for c in g.prefill_chunks), "graph.prefill_chunks must be in 1..kv_len"),
        (g.kv_dtype in ("float32", "float16") and g.logits in LOGITS_ROWS and g.cache in CACHE_LAYOUTS,
         "graph.kv_dtype/logits/cache unknown"),
        (m.quantization.scheme in QUANT_SCHEMES and m.quantization.dialect in (None, *DIALECTS), "unknown quantization"),
        (all(0 <= i < a.vocab_size for i in (m.tokens.bos_id, m.tokens.eos_id, m.tokens.pad_id)), "token ids outside the vocabulary"),
        (all(isinstance(s, str) for s in m.tokens.stop_strings), "tokens.stop_strings must be strings"),
        (_sampling_ok(m.sampling), "sampling: temperature >= 0, top_k >= 0, top_p in (0, 1], repetition_penalty > 0"),
        (all(type(i) is int and 0 <= i < a.vocab_size for i in m.tokens.stop_ids), "tokens.stop_ids outside the vocabulary"),
        (all(e.size >= 0 and _SHA256.fullmatch(e.sha256) for e in m.files.values()), "files need a size >= 0 and a hex sha256"),
        ((g.min_onnxruntime is None or version_tuple(g.min_onnxruntime)) and all(
            isinstance(v, str) and version_tuple(v) for v in g.onnxruntime_ops.values()),
         "graph.min_onnxruntime and graph.onnxruntime_ops need release versions such as \"1.22.0\""),
    ]
    for ok, message in checks:
        if not ok:
            raise BundleError(f"{where}: {message}; rebuild the bundle")
    for what, name in (("tokenizer", m.tokenizer), ("graph.onnx", g.onnx), ("graph.om", g.om)):
        if name is not None and name not in m.files:
            raise BundleError(f"{where}: {what} {name!r} is not listed in `files`, so the board would open it "
                              "unverified; rebuild the bundle")


def _expect(value, kind: type, what: str, where: str):
    if not isinstance(value, kind):
        raise BundleError(f"{where}: {what} must be a JSON {kind.__name__}, not {type(value).__name__}; rebuild the bundle")
    return value


def manifest_from_dict(data: dict, where: str = MANIFEST_NAME) -> Manifest:
    """Typed manifest from its JSON form; BundleError on unknown versions, missing or mistyped fields."""
    _expect(data, dict, "a manifest", where)
    version = data.get("format_version")
    if type(version) is not int or version not in SUPPORTED_FORMAT_VERSIONS:
        raise BundleError(
            f"{where}: format_version {version!r} is not supported by this board package "
            f"(knows {list(SUPPORTED_FORMAT_VERSIONS)}); rebuild the bundle or update board/"
        )
    required = ("model", "arch", "graph", "quantization", "tokens", "chat_template", "files")
    missing = [k for k in required if k not in data]
    if missing:
        raise BundleError(f"{where}: missing field(s) {', '.join(missing)}; rebuild the bundle")
    graph = dict(_expect(data["graph"], dict, "graph", where))
    for key in ("inputs", "outputs"):
        graph[key] = [_build(TensorSpec, t, where) for t in _expect(graph.get(key, []), list, f"graph.{key}", where)]
    files = _expect(data["files"], dict, "files (name -> {size, sha256})", where)
    manifest = Manifest(
        format_version=version,
        model=_expect(data["model"], dict, "model", where),
        arch=_build(Arch, data["arch"], where),
        graph=_build(Graph, graph, where),
        quantization=_build(Quantization, data["quantization"], where),
        tokens=_build(Tokens, data["tokens"], where),
        chat_template=_chat_template(data["chat_template"], version, where),
        sampling=_build(Sampling, data.get("sampling", {}), where),
        files={k: _build(FileEntry, v, where) for k, v in files.items()},
        tokenizer=_expect(data.get("tokenizer", "tokenizer.json"), str, "tokenizer", where),
    )
    _check_ranges(manifest, where)
    return manifest


def read_manifest(bundle_dir: Path) -> Manifest:
    """Read and validate `manifest.json` of a bundle directory (no checksum pass)."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{path}: no manifest; is {bundle_dir} a bundle? Build one with `python -m host build`")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        raise BundleError(f"{path}: unreadable manifest ({e}); rebuild or redeploy the bundle") from None
    return manifest_from_dict(data, where=str(path))


def verify_files(bundle_dir: Path, manifest: Manifest) -> None:
    """Check every listed file against the integrity rule first, then each size and sha256; BundleError naming the file."""
    from board.bundle import member_path  # board.bundle imports this module; the rule lives there

    paths = {name: member_path(bundle_dir, name, entry.size) for name, entry in manifest.files.items()}
    for name, path in paths.items():
        if not path.is_file():
            raise BundleError(f"{path}: listed in the manifest but missing; redeploy or rebuild the bundle")
    for name, path in paths.items():
        if sha256_file(path) != manifest.files[name].sha256:
            raise BundleError(f"{path}: checksum mismatch (corrupt or partial copy); redeploy or rebuild the bundle")


def load_manifest(bundle_dir: Path, verify: bool = True) -> Manifest:
    """Read the manifest and, by default, verify every file it lists."""
    manifest = read_manifest(bundle_dir)
    if verify:
        verify_files(bundle_dir, manifest)
    return manifest


def write_manifest(bundle_dir: Path, manifest: Manifest) -> Path:
    """Write `manifest.json` atomically (temp file + rename) so readers never see half of it."""
    bundle_dir = Path(bundle_dir)
    fd, tmp = tempfile.mkstemp(dir=bundle_dir, prefix=".manifest.", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(manifest.to_dict(), f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a bundle is read by other users (the board's)
    os.replace(tmp, bundle_dir / MANIFEST_NAME)
    return bundle_dir / MANIFEST_NAME
