"""The board runtime end to end on tiny bundles built by the real host pipeline (tests/support/bundles.py).

The cached, chunked generation loop is checked against a full recompute (whole sequence, empty
cache) on the same graph; the CLI is run in a subprocess, also with torch/transformers/onnx/host
made unimportable; a conversation runs past the KV window and past the position range.
"""
import json
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from board.backends import open_backend
from board.bundle import open_bundle
from board.chat import ChatSession
from board.engine import Engine
from board.errors import BoardError
from board.generate import GenerateConfig, generate
from board.perplexity import log_softmax, perplexity, streaming_perplexity
from board.sampling import GREEDY, SamplingConfig
from tests.support.paths import ROOT

PROMPT = "Once upon a time there was a little girl"


def full_forward(backend, manifest, ids):
    """Logits [n, V] of the whole sequence in one step from an empty cache: the no-cache reference."""
    graph = replace(manifest.graph, prefill_chunks=[1, len(ids)])
    return Engine(backend, manifest.arch, graph).feed(ids, all_logits=True)


def greedy_by_recompute(backend, manifest, ids, steps):
    ids = list(ids)
    out = []
    for _ in range(steps):
        token = int(np.argmax(full_forward(backend, manifest, ids)[-1]))
        if token == manifest.tokens.eos_id:
            break
        out.append(token)
        ids.append(token)
    return out


@pytest.fixture(scope="module")
def tiny(tiny_bundle):
    bundle = open_bundle(tiny_bundle)
    with open_backend(bundle, "onnxruntime", threads=1) as backend:
        yield bundle, backend


def test_chunked_prefill_logits_equal_one_full_forward(tiny):
    bundle, backend = tiny
    ids = bundle.tokenizer.encode(PROMPT + " and her mom said", bos=True)
    assert len(ids) > 16  # forces chunks of 16, 8 and 1
    engine = Engine(backend, bundle.manifest.arch, bundle.manifest.graph)
    chunked = engine.feed(ids, all_logits=True)
    np.testing.assert_allclose(chunked, full_forward(backend, bundle.manifest, ids), atol=1e-4, rtol=1e-4)
    assert engine.cache.next_pos == len(ids) and engine.cache.used == len(ids)


def test_greedy_generation_equals_full_recompute_for_the_first_window(tiny):
    bundle, backend = tiny
    ids = bundle.tokenizer.encode(PROMPT, bos=True)
    steps = bundle.manifest.graph.kv_len - len(ids)  # fill the window exactly: no eviction yet
    engine = Engine(backend, bundle.manifest.arch, bundle.manifest.graph)
    result = generate(engine, bundle.tokenizer, ids, GenerateConfig(steps, GREEDY), np.random.default_rng(0))
    expected = greedy_by_recompute(backend, bundle.manifest, ids, steps)
    assert result.tokens == expected
    assert len(expected) > 10
    assert result.text == bundle.tokenizer.decode(expected)


def test_generation_continues_past_the_window_keeping_the_sink(tiny):
    bundle, backend = tiny
    if bundle.manifest.graph.cache != "inplace":
        pytest.skip("this fixture was built for onnxruntime < 1.22: a slots cache, not the in-place one tested here")
    kv_len = bundle.manifest.graph.kv_len
    engine = Engine(backend, bundle.manifest.arch, bundle.manifest.graph, sink=4)
    cfg = GenerateConfig(kv_len, SamplingConfig(temperature=1.0, top_k=0, top_p=1.0))
    rng = np.random.default_rng(1)
    ids = bundle.tokenizer.encode(PROMPT, bos=True)
    while engine.cache.next_pos <= 2 * kv_len:  # keep going, past an early EOS too
        result = generate(engine, bundle.tokenizer, ids, cfg, rng)
        ids = result.unfed + bundle.tokenizer.encode(" and")
    fed = engine.cache.next_pos
    assert fed == len(engine.fed)  # positions kept increasing, one per token fed, through eviction
    # this graph updates a compact cache in place (graph.cache "inplace"): each eviction frees a quarter of the window
    assert engine.cache.compact and kv_len - (kv_len - 4) // 4 <= engine.cache.used <= kv_len
    held = engine.cache.slot_pos[: engine.cache.used].tolist()
    assert held[:4] == [0, 1, 2, 3]  # the sink survived
    assert held[4:] == list(range(fed - (engine.cache.used - 4), fed))  # then the most recent window, in slot order


def test_windowed_perplexity_scores_every_token_once_like_full_forwards_of_each_window(tiny):
    bundle, backend = tiny
    text = "Once upon a time there was a little girl named lily. She loved to play outside in the park. " * 2
    ids = bundle.tokenizer.encode(text)
    bos = bundle.manifest.tokens.bos_id
    nll = 0.0
    for start in range(0, len(ids), 15):  # windows of 16 positions: BOS + 15 text tokens
        window = [bos] + ids[start : start + 15]
        logp = log_softmax(full_forward(backend, bundle.manifest, window))
        nll -= logp[np.arange(len(window) - 1), window[1:]].sum()
    result = perplexity(Engine(backend, bundle.manifest.arch, bundle.manifest.graph), bundle.tokenizer, text, ctx=16)
    assert (result["tokens"], result["windows"], result["ctx"]) == (len(ids), -(-len(ids) // 15), 16)
    assert result["perplexity"] == pytest.approx(float(np.exp(nll / len(ids))), rel=1e-5)
    with pytest.raises(BoardError, match="--ctx 999 exceeds"):
        perplexity(Engine(backend, bundle.manifest.arch, bundle.manifest.graph), bundle.tokenizer, text, ctx=999)


def test_streamed_perplexity_through_the_cache_equals_a_full_forward(tiny):
    bundle, backend = tiny
    text = "Once upon a time there was a little girl named lily. She loved to play outside in the park."
    ids = bundle.tokenizer.encode(text, bos=True)
    logp = log_softmax(full_forward(backend, bundle.manifest, ids))
    nll = -np.mean(logp[np.arange(len(ids) - 1), ids[1:]])
    result = streaming_perplexity(Engine(backend, bundle.manifest.arch, bundle.manifest.graph), bundle.tokenizer, text)
    assert result["tokens"] == len(ids) - 1
    assert result["perplexity"] == pytest.approx(float(np.exp(nll)), rel=1e-5)


def test_chat_runs_past_the_window_and_past_the_position_range(tiny):
    bundle, backend = tiny
    engine = Engine(backend, bundle.manifest.arch, bundle.manifest.graph, sink=4)
    cfg = GenerateConfig(24, SamplingConfig(temperature=1.0, top_k=0, top_p=1.0))
    session = ChatSession(engine, bundle.tokenizer, bundle.manifest.chat_template, cfg, np.random.default_rng(3))
    positions, answers = [], []
    for turn in range(32):
        result = session.ask(f"Tell me about the big red ball number {turn}.")
        answers.append(result.tokens)
        positions.append(engine.cache.next_pos)
    assert session.rebuilds >= 1  # 32 turns x ~30 tokens > 512 positions: history re-encoded
    first_rebuild = next(i for i in range(1, 32) if positions[i] < positions[i - 1])
    assert positions[first_rebuild - 1] > bundle.manifest.graph.kv_len  # the window overflowed before that
    assert all(b > a for a, b in zip(positions[:first_rebuild], positions[1:first_rebuild]))
    assert sum(1 for a in answers if a) >= 28  # the model kept answering
    assert len(session.messages) < 2 * 32  # the oldest turns were trimmed


def run_cli(*args, block_host_stack=False, check=True):
    """`python -m board ...` in a subprocess; optionally with torch/transformers/onnx/host unimportable."""
    code = "import runpy, sys\n"
    if block_host_stack:
        code += "for name in ('torch', 'transformers', 'onnx', 'onnxscript', 'host'):\n    sys.modules[name] = None\n"
    code += "sys.argv = ['board'] + sys.argv[1:]\nrunpy.run_module('board', run_name='__main__')\n"
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_cli_greedy_generate_without_the_host_stack(tiny):
    bundle, backend = tiny
    ids = bundle.tokenizer.encode(PROMPT, bos=True)
    expected = greedy_by_recompute(backend, bundle.manifest, ids, 12)
    proc = run_cli("generate", "--bundle", bundle.path, "--prompt", PROMPT, "--max-new-tokens", 12, "--greedy",
                   "--json", "--backend", "onnxruntime", block_host_stack=True)
    out = json.loads(proc.stdout)
    assert out["tokens"] == expected
    assert out["prompt_tokens"] == len(ids) and out["backend"] == "onnxruntime"
    assert out["text"] == bundle.tokenizer.decode(expected)


def test_cli_streams_the_same_text_it_reports(tiny):
    bundle, _ = tiny
    common = ("generate", "--bundle", bundle.path, "--prompt", PROMPT, "--max-new-tokens", 10, "--greedy")
    streamed = run_cli(*common).stdout
    reported = json.loads(run_cli(*common, "--json").stdout)
    assert reported["finish_reason"] == "length"  # the random model runs to the budget: the text says so
    assert streamed == reported["text"] + " [length]\n"


def test_cli_perplexity_bench_info_verify(tiny, tmp_path):
    bundle, _ = tiny
    text = tmp_path / "t.txt"
    text.write_text("Once upon a time there was a happy dog. " * 20)
    ppl = json.loads(run_cli("perplexity", "--bundle", bundle.path, "--text", text, "--max-tokens", 100, "--json").stdout)
    assert (ppl["tokens"], ppl["ctx"]) == (100, bundle.manifest.graph.kv_len) and ppl["perplexity"] > 1.0
    streamed = json.loads(run_cli("perplexity", "--bundle", bundle.path, "--text", text, "--max-tokens", 100,
                                  "--stream", "--json").stdout)
    assert streamed["tokens"] == 99 and "windows" not in streamed
    bench = json.loads(run_cli("bench", "--bundle", bundle.path, "--prompt-tokens", 16, "--new-tokens", 8,
                               "--threads", 1, "--json", block_host_stack=True).stdout)
    assert bench["decode_tok_s_median"] > 0 and bench["prefill_tok_s"] > 0 and bench["peak_rss_mb"] > 10
    # the prefill rate is the prompt over the time to its first token; the median step is at most the 90th percentile
    assert bench["prefill_tok_s"] == pytest.approx(16 / (bench["ttft_ms"] / 1000))
    assert bench["decode_ms_median"] <= bench["decode_ms_p90"]
    assert bench["decode_tok_s_median"] == pytest.approx(1000 / bench["decode_ms_median"])
    info = json.loads(run_cli("info", "--bundle", bundle.path, "--json").stdout)
    assert info["kv_len"] == bundle.manifest.graph.kv_len and info["quantization"] == "none"
    assert "model.onnx" in info["files"]
    assert run_cli("verify", "--bundle", bundle.path).stdout.startswith("ok:")


def test_corrupt_model_is_one_clear_line_naming_the_file(tiny_bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    data = bytearray((broken / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "model.onnx").write_bytes(bytes(data))
    for args, rc in ((("generate", "--bundle", broken, "--prompt", "hi"), 2), (("verify", "--bundle", broken), 1)):
        proc = run_cli(*args, check=False)
        assert proc.returncode == rc
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "model.onnx" in lines[0] and "checksum mismatch" in lines[0]


def test_asking_for_acl_without_an_om_says_how_to_get_one(tiny_bundle):
    proc = run_cli("generate", "--bundle", tiny_bundle, "--prompt", "hi", "--backend", "acl", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "model.om" in proc.stderr and "python -m host compile" in proc.stderr


def test_w8a8_bundle_generates_and_stays_close_to_fp32(tiny, tiny_w8a8_bundle):
    bundle, backend = tiny
    q = open_bundle(tiny_w8a8_bundle)
    assert q.manifest.quantization.scheme == "w8a8"
    text = "Once upon a time there was a little girl named lily. She loved to play outside in the park. " * 3
    with open_backend(q, "onnxruntime", threads=1) as qbackend:
        ppl_q = perplexity(Engine(qbackend, q.manifest.arch, q.manifest.graph), q.tokenizer, text)["perplexity"]
        result = generate(Engine(qbackend, q.manifest.arch, q.manifest.graph), q.tokenizer, q.tokenizer.encode(PROMPT, bos=True),
                          GenerateConfig(16, GREEDY), np.random.default_rng(0))
    ppl = perplexity(Engine(backend, bundle.manifest.arch, bundle.manifest.graph), bundle.tokenizer, text)["perplexity"]
    assert abs(ppl_q / ppl - 1) < 0.05
    assert len(result.tokens) == 16 or result.finish_reason == "eos"


def test_a_directory_without_a_manifest_is_one_clear_line(tmp_path):
    for args, rc in ((("verify", "--bundle", tmp_path), 1), (("info", "--bundle", tmp_path, "--json"), 2),
                     (("generate", "--bundle", tmp_path / "absent", "--prompt", "hi"), 2)):
        proc = run_cli(*args, check=False)
        assert proc.returncode == rc and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and str(tmp_path) in proc.stderr
