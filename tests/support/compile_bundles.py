"""Bundles for the compile tests (a stories260K-shaped W8A8 graph), the stand-in ATC's plugin and toolkit."""
from __future__ import annotations

import hashlib
from pathlib import Path

from board.manifest import (
    Arch, Graph, Manifest, Quantization, TensorSpec, Tokens, builtin_chat_template, file_entries, write_manifest,
)
from tests.support.onnx_graphs import tiny_llm_onnx
from tests.support.paths import ROOT

FAKE_BIN = ROOT / "tests" / "fake_bin"  # the stand-in `atc` (TEST DOUBLE)


def make_manifest(layers, kv_heads, head_dim, kv_len, chunks, vocab=32000, hidden=2048, heads=32) -> Manifest:
    kv = [2 * layers, kv_heads, kv_len, head_dim]  # format 7: rank 4
    return Manifest(
        model={"name": "test", "source": "tests/test_compile.py"},
        arch=Arch(layers, heads, kv_heads, head_dim, hidden, 4 * hidden, vocab, 10000.0, 1e-5, 2048),
        graph=Graph(
            kv_len=kv_len, kv_dtype="float32", prefill_chunks=list(chunks),
            inputs=[TensorSpec("input_ids", "int64", [1, "S"]), TensorSpec("attention_mask", "int64", [1, "KV+S"]),
                    TensorSpec("position_ids", "int64", [1, "S"]), TensorSpec("past_key_values", "float32", kv)],
            outputs=[TensorSpec("logits", "float32", [1, "S", vocab]),
                     TensorSpec("present_key_values", "float32", kv[:2] + ["S", head_dim])],
        ),
        quantization=Quantization(scheme="w8a8", dialect="s8s8"),
        tokens=Tokens(bos_id=1, eos_id=2, pad_id=0),
        chat_template=builtin_chat_template("none"),
        files={},
    )


def make_bundle(tmp_path, dialect="s8s8", chunks=(1, 16), opset=17) -> Path:
    """A stories260K-shaped bundle on disk (L 5, Hkv 4, D 8, KV 64) with a small W8A8 graph."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    tiny_llm_onnx(bundle / "model.onnx", layers=5, kv_heads=4, head_dim=8, kv_len=64, dialect=dialect, opset=opset)
    (bundle / "tokenizer.json").write_text("{}")
    m = make_manifest(5, 4, 8, 64, chunks, vocab=32, hidden=16, heads=8)
    m = Manifest(**{**m.__dict__, "files": file_entries(bundle, ["model.onnx", "tokenizer.json"])})
    write_manifest(bundle, m)
    return bundle


def snapshot(bundle: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(bundle.iterdir())}


def install_fake_plugin(root: Path, marker=b"MatMulInteger", enable=True) -> Path:
    """A file where ATC looks for ONNX parser plugins, holding the op name as the real .so does;
    `enable` lists the vendor in vendors/config.ini's load_priority, as docker/plugin/build.sh does."""
    lib = root / "vendors" / "edge_llm" / "framework" / "onnx" / "libcust_onnx_parsers.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"\x7fELF...ai.onnx::17::" + marker + b"\x00")
    if enable:
        (root / "vendors" / "config.ini").write_text("load_priority=edge_llm,customize\n")
    return lib


def fake_toolkit(root: Path, version: str) -> Path:
    """A toolkit directory holding only its version file (ascend_toolkit_install.info), as CANN 8 writes it."""
    home = root / "toolkit" / "latest"
    (home / "x86_64-linux").mkdir(parents=True)
    (home / "x86_64-linux" / "ascend_toolkit_install.info").write_text(f"package_name=Ascend-cann-toolkit\nversion={version}\n")
    return home
