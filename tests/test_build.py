"""host.build and `python -m host build`: complete, verified bundles; atomic rebuilds; one-line errors."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from board.manifest import ChatTemplate, Sampling, builtin_chat_template, load_manifest
from host import build as build_module
from host.__main__ import main
from host.build import BuildConfig, build
from host.errors import BuildError, InputError
from tests.support.bundles import (
    build_test_bundle,
    bundle_engine,
    bundle_greedy,
    bundle_perplexity,
    make_model,
    make_tokenizer,
    sample_text,
)
from tests.support.paths import LLAMA2_TOKENIZER, ROOT, STORIES_BIN, STORIES_TOK, TINYSTORIES_TEXT, WIKITEXT, need

ONCE = "Once upon a time"
LILY = ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball."


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


# --- the tiny bundles everyone's tests use ----------------------------------------------------
def test_tiny_bundle_is_complete_and_checksummed(tiny_bundle):
    manifest = load_manifest(tiny_bundle)  # verifies every sha256
    assert set(manifest.files) == {"model.onnx", "tokenizer.json", "report.json"}
    assert sorted(p.name for p in tiny_bundle.iterdir()) == ["manifest.json", "model.onnx", "report.json", "tokenizer.json"]
    a, g = manifest.arch, manifest.graph
    assert (a.num_layers, a.num_heads, a.num_kv_heads, a.head_dim, a.vocab_size) == (2, 4, 2, 16, 320)
    assert (g.kv_len, g.kv_dtype, g.prefill_chunks, g.logits, g.opset) == (64, "float32", [1, 8, 16], "index", 17)
    # head_dim 16 suits onnxruntime's GroupQueryAttention: one KV buffer per layer and kind, updated in place
    assert g.cache == "inplace" and manifest.format_version == 8
    assert [t.name for t in g.inputs] == ["input_ids", "attention_mask", "position_ids", "logits_index",
                                          "past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key",
                                          "past_key_values.1.value"]
    assert g.outputs[0].shape == [1, "N", 320]  # logits for the rows logits_index names
    assert {tuple(t.shape) for t in g.inputs[4:] + g.outputs[1:]} == {(1, 2, 64, 16)}
    assert manifest.quantization.scheme == "none" and manifest.quantization.dialect is None
    assert (manifest.tokens.bos_id, manifest.tokens.eos_id, manifest.tokens.add_bos) == (1, 2, True)
    assert manifest.chat_template == builtin_chat_template("none")  # no template of its own: the built-in file
    assert manifest.sampling == Sampling()  # the random model has no generation_config.json


def test_tiny_w8a8_bundle_records_quantization_and_verification(tiny_w8a8_bundle, tiny_bundle):
    manifest = load_manifest(tiny_w8a8_bundle)
    q = manifest.quantization
    assert (q.scheme, q.dialect, q.weights, q.activations, q.quantized_layers) == (
        "w8a8", "nbits8", "int8_per_channel_symmetric", "int8_per_block_dynamic", 15)
    report = json.loads((tiny_w8a8_bundle / "report.json").read_text())
    assert set(report["calibration"]["linears"]) >= {"layers.0.q_proj", "layers.1.down_proj", "lm_head"}
    ops = report["export"]["ops"]
    assert ops["MatMulNBits"] == 9 and "MatMulInteger" not in ops  # 2 layers x (qkv, o, gate_up, down) + lm_head
    assert all(oct(p.stat().st_mode & 0o777) == "0o644" for p in tiny_w8a8_bundle.iterdir())
    v = report["verification"]
    assert v["parity"]["onnx_vs_fp32"]["prefill_max_abs"] <= 2 * v["parity"]["twin_vs_fp32"]["prefill_max_abs"] + 1e-3
    assert 0.9 < v["perplexity"]["ratio"] < 1.1 and v["greedy"]["teacher_forced_top1_agreement"] > 0.8
    assert manifest.files["model.onnx"].size < 0.6 * load_manifest(tiny_bundle).files["model.onnx"].size


def test_bundle_graph_gives_the_same_logits_chunked_or_whole(tiny_bundle):
    """The board's engine on the bundle alone: prefill in manifest chunks + decode == one prefill."""
    bundle, chunked = bundle_engine(tiny_bundle)
    ids = bundle.tokenizer.encode("once upon a time there was a little girl named lily", bos=True)[:20]
    _, whole = bundle_engine(tiny_bundle, prefill_chunks=[1, len(ids)])
    with chunked.backend, whole.backend:
        pieces = [chunked.feed(ids[:16], all_logits=True)] + [chunked.feed([t], all_logits=True) for t in ids[16:]]
        np.testing.assert_allclose(np.concatenate(pieces), whole.feed(ids, all_logits=True), atol=1e-4, rtol=0)


def test_fp16_kv_bundle_declares_and_returns_fp16_cache(tmp_path):
    out = build_test_bundle(tmp_path / "fp16", quant="w8a8", kv_len=32, dtype="fp16", prefill_chunks=[1, 8])
    bundle, engine = bundle_engine(out)
    manifest, session = bundle.manifest, engine.backend.session
    assert manifest.graph.kv_dtype == "float16"
    specs = {t.name: t.dtype for t in manifest.graph.inputs + manifest.graph.outputs}
    assert specs == {"input_ids": "int64", "attention_mask": "int64", "position_ids": "int64",
                     "past_key_values": "float16", "logits": "float32", "present_key_values": "float16"}
    types = {v.name: v.type for v in session.get_inputs() + session.get_outputs()}
    assert types["past_key_values"] == types["present_key_values"] == "tensor(float16)"
    ids, _ = bundle_greedy(out, "once upon a time", 5)
    assert len(ids) == 5


def test_test_bundles_are_deterministic(tmp_path, tiny_bundle):
    again = build_test_bundle(tmp_path / "again", quant="none")
    for name in ("model.onnx", "tokenizer.json"):
        assert (again / name).read_bytes() == (tiny_bundle / name).read_bytes(), name


# --- atomic rebuilds ---------------------------------------------------------------------------
@pytest.fixture
def existing(tmp_path):
    out = build_test_bundle(tmp_path / "bundle", quant="w8a8", kv_len=32, prefill_chunks=[1, 8])
    return out, digests(out)


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("quant", ["none", "w8a8"])
def test_broken_export_fails_the_build_and_keeps_the_previous_bundle(existing, monkeypatch, quant):
    out, before = existing
    real = build_module.export_onnx

    class Shifted(torch.nn.Module):  # a layout bug: output channels off by one
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return torch.roll(self.inner(x), 1, dims=-1)

    def broken(model, directory, kv_len, **kw):  # only the exported graph has the bug, not its torch twin
        block = getattr(model, "model", model).blocks[0]  # an InplaceCacheGraph wraps the EdgeLlama
        original = block.o_proj
        block.o_proj = Shifted(original)
        try:
            return real(model, directory, kv_len, **kw)
        finally:
            block.o_proj = original

    monkeypatch.setattr(build_module, "export_onnx", broken)
    with pytest.raises(BuildError, match="the export is broken"):
        build_test_bundle(out, quant=quant, kv_len=32, prefill_chunks=[1, 8])
    assert digests(out) == before and leftovers(out) == []


def test_interrupted_rebuild_keeps_the_previous_bundle(existing, monkeypatch):
    out, before = existing

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "verify_graph", interrupt)
    with pytest.raises(KeyboardInterrupt):
        build_test_bundle(out, quant="none", kv_len=32)
    assert digests(out) == before and leftovers(out) == []


def test_successful_rebuild_replaces_the_bundle_completely(existing):
    out, before = existing
    (out / "stale.txt").write_text("from an older build")
    build_test_bundle(out, quant="none", kv_len=32, prefill_chunks=[1, 8])
    assert load_manifest(out).quantization.scheme == "none"
    assert not (out / "stale.txt").exists() and digests(out) != before and leftovers(out) == []


def test_out_that_is_a_non_bundle_directory_is_refused(tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="non-empty directory without a bundle"):
        build_test_bundle(tmp_path / "precious")
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


# --- the CLI -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny HF checkpoint directory with its tokenizer.json, and a calibration text file."""
    root = tmp_path_factory.mktemp("cli")
    make_model(vocab=320).save_pretrained(root / "tiny-llama")
    make_tokenizer(320).save(str(root / "tiny-llama" / "tokenizer.json"))
    (root / "calib.txt").write_text(sample_text())
    return root


def cli(*args: str) -> list[str]:
    fast = ["--kv-len", "32", "--prefill-chunks", "1,8", "--calib-samples", "2", "--calib-seq-len", "32",
            "--eval-tokens", "64"]
    return ["build", *fast, *args]  # later options win: a test can override the fast defaults


def test_cli_builds_a_bundle_and_prints_a_json_summary(hf_dir, capsys):
    out = hf_dir / "out"
    rc = main(cli("--model", str(hf_dir / "tiny-llama"), "--calib", str(hf_dir / "calib.txt"), "--quant", "w8a8",
                  "--smooth", "0.5", "--act-scheme", "static", "--target", "ascend", "--out", str(out)))
    captured = capsys.readouterr()
    assert rc == 0
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["bundle"] == str(out) and summary["dialect"] == "s8s8"
    manifest = load_manifest(out)
    assert manifest.model["name"] == "tiny-llama" and manifest.graph.kv_len == 32
    assert (manifest.quantization.smooth_alpha, manifest.quantization.activations) == (0.5, "int8_per_tensor_static")
    assert "build: export" in captured.err


def test_cli_dialect_u8u8_writes_matmulinteger_with_per_token_activations(hf_dir, capsys):
    out = hf_dir / "out-u8u8"
    rc = main(cli("--model", str(hf_dir / "tiny-llama"), "--calib", str(hf_dir / "calib.txt"), "--quant", "w8a8",
                  "--dialect", "u8u8", "--out", str(out)))
    assert rc == 0 and json.loads(capsys.readouterr().out.strip().splitlines()[-1])["dialect"] == "u8u8"
    manifest = load_manifest(out)
    assert manifest.quantization.activations == "int8_per_token_dynamic"
    ops = {n.op_type for n in onnx.load(str(out / manifest.graph.onnx)).graph.node}
    assert "MatMulInteger" in ops and "MatMulNBits" not in ops


def test_cli_takes_the_chat_template_from_the_tokenizer_config_unless_told(hf_dir, tmp_path, capsys):
    model_dir = tmp_path / "chat-llama"
    shutil.copytree(hf_dir / "tiny-llama", model_dir)
    (model_dir / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>",
        "chat_template": "{% for message in messages %}{% if message['role'] == 'user' %}"  # TinyLlama-Chat's, abridged
                         "{{ '<|user|>\n' + message['content'] + eos_token }}{% endif %}{% endfor %}"}))
    args = ["--model", str(model_dir), "--calib", str(hf_dir / "calib.txt"), "--quant", "none"]
    assert main(cli(*args, "--out", str(tmp_path / "detected"))) == 0
    manifest = load_manifest(tmp_path / "detected")
    template = json.loads((model_dir / "tokenizer_config.json").read_text())["chat_template"]
    specials = {"bos_token": "<s>", "eos_token": "</s>"}
    assert manifest.chat_template == ChatTemplate("zephyr", template, "tokenizer_config.json", specials)
    assert manifest.tokens.stop_strings == ["<|user|>", "<|system|>"]
    assert main(cli(*args, "--chat-template", "chatml", "--out", str(tmp_path / "told"))) == 0
    told = load_manifest(tmp_path / "told")
    assert told.chat_template == replace(builtin_chat_template("chatml"), special_tokens=specials)
    assert told.tokens.stop_strings == ["<|im_end|>"]


def one_line_error(capsys, argv: list[str], pattern: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("error: ") and re.search(pattern, err[-1]), err
    assert "Traceback" not in "\n".join(err)


def test_cli_missing_checkpoint_exits_2(hf_dir, tmp_path, capsys):
    one_line_error(capsys, cli("--model", str(tmp_path / "nope.bin"), "--calib", str(hf_dir / "calib.txt"),
                               "--quant", "none", "--out", str(tmp_path / "o")), r"nope\.bin: no such file")


def test_cli_corrupt_checkpoint_exits_2(hf_dir, tmp_path, capsys):
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"\x07" * 40)
    one_line_error(capsys, cli("--model", str(bad), "--tokenizer", str(hf_dir / "tiny-llama" / "tokenizer.json"),
                               "--calib", str(hf_dir / "calib.txt"), "--quant", "none", "--out", str(tmp_path / "o")),
                   r"model\.bin")
    assert not (tmp_path / "o").exists()


def test_cli_unknown_architecture_exits_2(hf_dir, tmp_path, capsys):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    one_line_error(capsys, cli("--model", str(tmp_path / "gpt2"), "--calib", str(hf_dir / "calib.txt"),
                               "--quant", "w8a8", "--out", str(tmp_path / "o")), r"unsupported architecture")


def test_cli_tokenizer_that_does_not_fit_the_vocab_exits_2(hf_dir, tmp_path, capsys):
    make_model(vocab=200).save_pretrained(tmp_path / "small-vocab")
    one_line_error(capsys, cli("--model", str(tmp_path / "small-vocab"),
                               "--tokenizer", str(hf_dir / "tiny-llama" / "tokenizer.json"),
                               "--calib", str(hf_dir / "calib.txt"), "--quant", "w8a8", "--out", str(tmp_path / "o")),
                   r"has 320 tokens but model .* has a vocabulary of 200")


@pytest.mark.parametrize("content,pattern", [("", "the file is empty"), ("  \n\n ", "the file is empty"),
                                             ("Hi.", "calibration text has \\d+ tokens")])
def test_cli_empty_or_tiny_calibration_text_exits_2(hf_dir, tmp_path, capsys, content, pattern):
    (tmp_path / "calib.txt").write_text(content)
    one_line_error(capsys, cli("--model", str(hf_dir / "tiny-llama"), "--calib", str(tmp_path / "calib.txt"),
                               "--quant", "w8a8", "--out", str(tmp_path / "o")), pattern)


@pytest.mark.parametrize("option,pattern", [(["--smooth", "1.5"], "alpha is in \\[0, 1\\]"),
                                            (["--prefill-chunks", "1,a"], "comma-separated integers"),
                                            (["--chat-template", "vicuna"], "use one of zephyr")])
def test_cli_bad_options_exit_2(hf_dir, tmp_path, capsys, option, pattern):
    one_line_error(capsys, cli("--model", str(hf_dir / "tiny-llama"), "--calib", str(hf_dir / "calib.txt"),
                               "--quant", "w8a8", "--out", str(tmp_path / "o"), *option), pattern)


# --- the real tiny model: stories260K ---------------------------------------------------------------
def test_stories260K_fp32_bundle_tells_the_lily_story_like_llama2c(stories_bundles):
    _, text = bundle_greedy(stories_bundles["none"], ONCE, 40)
    assert text.startswith(LILY), text


def test_stories260K_w8a8_bundle_agrees_on_the_first_sentence(stories_bundles):
    _, text = bundle_greedy(stories_bundles["w8a8"], ONCE, 40)
    first_sentence = LILY[: LILY.index(".") + 1]
    assert text.startswith(first_sentence), text


def test_stories260K_w8a8_perplexity_within_3_percent_of_fp32(stories_bundles):
    text = need(TINYSTORIES_TEXT).read_text()  # the tail: held out from calibration
    kv_len = load_manifest(stories_bundles["none"]).graph.kv_len  # the report's windows are kv_len positions
    fp32 = bundle_perplexity(stories_bundles["none"], text, chunk=kv_len)
    w8a8 = bundle_perplexity(stories_bundles["w8a8"], text, chunk=kv_len)
    assert 2.0 < fp32 < 12.0  # a trained model on its own kind of text, not chance (512)
    assert w8a8 / fp32 < 1.03, (fp32, w8a8)
    report = json.loads((stories_bundles["w8a8"] / "report.json").read_text())["verification"]["perplexity"]
    assert report["fp32"] == pytest.approx(fp32, rel=1e-3) and report["onnx"] == pytest.approx(w8a8, rel=1e-3)


@pytest.fixture(scope="module")
def stories_ascend(tmp_path_factory) -> Path:
    """stories260K for the NPU with the target's defaults: s8s8 W8A8, fp16 compute, opset 11.

    4096 held-out tokens: the default 512 are too few for a 1 % bound on this model. They gave 1.0115 on
    a CPU without AVX-512 and passed on others; 4096 give 1.0038, and 20000 (board perplexity) 1.0034."""
    out = tmp_path_factory.mktemp("stories-ascend") / "b"
    return build(BuildConfig(model=str(need(STORIES_BIN)), tokenizer=str(need(STORIES_TOK)), calib=need(TINYSTORIES_TEXT),
                             quant="w8a8", target="ascend", kv_len=128, eval_tokens=4096, out=out)).path


def test_stories260K_ascend_bundle_computes_in_fp16_within_1_percent_of_fp32(stories_ascend):
    import onnx

    manifest = load_manifest(stories_ascend)
    assert (manifest.graph.compute_dtype, manifest.graph.opset, manifest.quantization.dialect) == ("float16", 11, "s8s8")
    assert manifest.graph.kv_dtype == "float16"  # the cache defaults to the compute dtype: no cast of it per step
    proto = onnx.load(str(stories_ascend / "model.onnx"))
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 11)]  # what the exporter really emitted
    fp16_tensors = {i.name for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    assert len(fp16_tensors) >= 11  # the norm weights (2 per layer + final) are fp16 in the graph
    ppl = json.loads((stories_ascend / "report.json").read_text())["verification"]["perplexity"]
    assert ppl["ratio"] == ppl["onnx"] / ppl["fp32"] and ppl["ratio"] <= 1.01, ppl  # measured 1.0038 (bench/RESULTS.md)
    _, text = bundle_greedy(stories_ascend, ONCE, 40)
    assert text.startswith(LILY), text


def test_dry_run_of_an_fp16_ascend_bundle_names_precision_and_opset(stories_ascend, capsys):
    assert main(["compile", "--bundle", str(stories_ascend), "--soc", "20T", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cross = "" if platform.machine() == "aarch64" else ", for linux/aarch64 (cross-compiled)"  # ATC's --host_env_*
    assert lines[-2] == ("# Ascend310B1 (20T board), graph opset 11, compute float16, --precision_mode_v2=origin, "
                         f"--op_select_implmode=high_precision, gears [1, 16, 64]{cross}")
    assert lines[-1].startswith("atc --model=") and "--precision_mode_v2=origin" in lines[-1]


def test_compute_and_opset_options_and_their_bounds(tmp_path, capsys):
    path = build_test_bundle(tmp_path / "b", quant="w8a8", target="ascend", compute="fp32", opset=13)
    manifest = load_manifest(path)
    assert (manifest.graph.compute_dtype, manifest.graph.opset, manifest.graph.kv_dtype) == ("float32", 13, "float32")
    assert load_manifest(build_test_bundle(tmp_path / "o", quant="none")).graph.opset == 17  # onnxruntime target
    with pytest.raises(InputError, match="--opset 10: use 11 .the lowest that expresses the graph. to 18"):
        build_test_bundle(tmp_path / "x", opset=10)


# --- TinyLlama-shaped (slow) ---------------------------------------------------------------------------
TINYLLAMA = dict(vocab=32000, layers=22, hidden=2048, heads=32, kv_heads=4, intermediate=5632,
                 rms_norm_eps=1e-5, max_position_embeddings=2048, init_std=0.02)


@pytest.mark.slow
def test_tinyllama_shaped_w8a8_build(tmp_path):
    """Random weights with TinyLlama-1.1B-Chat's shapes through the CLI; prints wall time and peak RSS."""
    import torch

    model_dir = tmp_path / "tinyllama-shaped"
    make_model(**TINYLLAMA).to(torch.bfloat16).save_pretrained(model_dir)  # stored bf16, as the real one is
    calib = need(WIKITEXT)
    cmd = [sys.executable, "-m", "host", "build", "--model", str(model_dir), "--tokenizer", str(need(LLAMA2_TOKENIZER)),
           "--calib", str(calib), "--quant", "w8a8", "--kv-len", "256", "--out", str(tmp_path / "bundle")]
    timer = ["/usr/bin/time", "-v"] if shutil.which("/usr/bin/time") else []
    start = time.time()
    proc = subprocess.run(timer + cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.time() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    print(f"\nTinyLlama-shaped w8a8 build: {wall:.0f} s wall, peak RSS "
          f"{int(rss.group(1)) / 2**20:.2f} GiB" if rss else f"\nTinyLlama-shaped w8a8 build: {wall:.0f} s wall")
    print(proc.stdout.strip().splitlines()[-1])
    manifest = load_manifest(tmp_path / "bundle")
    assert manifest.arch.num_layers == 22 and manifest.quantization.quantized_layers == 22 * 7 + 1
    assert manifest.files["model.onnx"].size < 2 * 2**30
