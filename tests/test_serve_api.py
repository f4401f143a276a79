"""`python -m board serve` as a real process, driven by the official `openai` client and plain HTTP."""
from __future__ import annotations

import json
import socket
import threading
import time
from http.client import HTTPConnection

import numpy as np
import openai
import pytest

from board.backends import open_backend
from board.bundle import open_bundle
from board.engine import Engine
from board.generate import GenerateConfig, generate
from board.sampling import SamplingConfig
from tests.support.serve import http, start_server

GREEDY = {"temperature": 0}
LILY = ", there was a little girl named Lily"  # stories260K greedy, 10 tokens after "Once upon a time"


@pytest.fixture(scope="module")
def stories(stories_bundle, tmp_path_factory):
    server = start_server(stories_bundle, tmp_path_factory.mktemp("serve") / "server.log", "--threads", "1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def guarded(slow_bundle, tmp_path_factory):
    """The slow model behind an API key read from a file, with room for one waiting request."""
    tmp = tmp_path_factory.mktemp("serve-guarded")
    (tmp / "key").write_text("s3cret-key\n")
    server = start_server(slow_bundle, tmp / "server.log", "--threads", "1", "--api-key-file", str(tmp / "key"),
                          "--queue-size", "1", "--max-tokens", "2000", api_key="s3cret-key")
    yield server
    server.stop()


def chat_text(client, content: str, **kw) -> str:
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": content}], **kw)
    return r.choices[0].message.content


# --- models, health, completions ------------------------------------------------------------
def test_models_lists_the_bundle_model_and_health_says_ok(stories):
    models = stories.client().models.list()
    assert [m.id for m in models.data] == ["stories260K"]
    assert models.data[0].object == "model"
    assert http(stories.url + "/health") == (200, {"status": "ok", "model": "stories260K"})


def test_models_reports_the_sampling_defaults_that_a_request_without_options_gets(stories):
    status, body = http(stories.url + "/v1/models")
    defaults = body["data"][0]["sampling_defaults"]
    assert status == 200 and defaults["max_tokens"] == 256  # `board serve --max-tokens`'s default
    assert {"temperature", "top_p", "top_k"} <= set(defaults)

    def text(**options):
        data = json.dumps({"prompt": "Once upon a time", "seed": 7, **options}).encode()
        status, body = http(stories.url + "/v1/completions", data, {"Content-Type": "application/json"})
        assert status == 200, body
        return body["choices"][0]["text"], body["usage"]["completion_tokens"]

    # the same seed with the reported values sent explicitly: the same sampled answer, token for token
    assert text() == text(**defaults) != text(**{**defaults, "temperature": 0.5 if defaults["temperature"] != 0.5 else 1.0})


def test_a_request_without_sampling_fields_gets_the_models_defaults_which_models_reports(stories_bundle, tmp_path):
    import shutil

    bundle = tmp_path / "greedy-model"
    shutil.copytree(stories_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["sampling"] = {"temperature": 0.0}  # as the host writes for generation_config's do_sample false
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    server = start_server(bundle, tmp_path / "server.log", "--threads", "1")
    try:
        builtin = SamplingConfig()
        status, body = http(server.url + "/v1/models")
        assert status == 200 and body["data"][0]["sampling_defaults"] == {
            "temperature": 0.0, "top_k": builtin.top_k, "top_p": builtin.top_p, "repetition_penalty": 1.0,
            "frequency_penalty": 0.0, "presence_penalty": 0.0, "max_tokens": 256}
        texts = {server.client().completions.create(model="m", prompt="Once upon a time", max_tokens=10, seed=s).choices[0].text
                 for s in (1, 2)}
        assert texts == {LILY}  # greedy whatever the seed: the model's default, not OpenAI's temperature 1
        told = server.client().completions.create(model="m", prompt="Once upon a time", max_tokens=10, seed=1, temperature=2)
        assert told.choices[0].text != LILY
    finally:
        server.stop()


def test_completion_continues_the_prompt_with_the_models_greedy_text(stories):
    r = stories.client().completions.create(model="stories260K", prompt="Once upon a time", max_tokens=10, **GREEDY)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].text == LILY and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (5, 10, 15)


def local_greedy(bundle_path, prompt: str, n: int, **penalties) -> str:
    """The board library's own greedy continuation, in this process, with the given penalties."""
    bundle = open_bundle(bundle_path)
    cfg = GenerateConfig(n, SamplingConfig(temperature=0.0, **penalties))
    with open_backend(bundle, "onnxruntime", threads=1) as backend:
        engine = Engine(backend, bundle.manifest.arch, bundle.manifest.graph)
        ids = bundle.tokenizer.encode(prompt, bos=True)
        return generate(engine, bundle.tokenizer, ids, cfg, np.random.default_rng(0)).text


def test_frequency_and_presence_penalties_change_the_answer_as_the_board_library_does(stories, stories_bundle):
    ask = lambda **kw: stories.client().completions.create(model="m", prompt="Once upon a time", max_tokens=40,
                                                           **GREEDY, **kw).choices[0].text
    plain, steered = ask(), ask(presence_penalty=2.0, frequency_penalty=0.5)
    assert ask(presence_penalty=0, frequency_penalty=0.0) == plain == local_greedy(stories_bundle, "Once upon a time", 40)
    assert steered != plain  # greedy stories260K repeats tokens within 40 ("she", ","): the penalties move it
    assert steered == local_greedy(stories_bundle, "Once upon a time", 40, presence_penalty=2.0, frequency_penalty=0.5)


def test_stop_string_ends_the_answer_before_it_and_says_stop(stories):
    r = stories.client().completions.create(model="m", prompt="Once upon a time", max_tokens=30, stop=["Lily", "zzz"], **GREEDY)
    assert r.choices[0].text == ", there was a little girl named "
    assert r.choices[0].finish_reason == "stop"


def test_streamed_chat_equals_plain_chat_with_one_id_role_first_and_a_final_finish_reason(stories):
    client = stories.client()
    plain = chat_text(client, "Once upon a time", max_tokens=40, **GREEDY)
    chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Once upon a time"}],
                                                 max_tokens=40, stream=True, **GREEDY))
    assert plain.startswith(LILY) and len(plain) > len(LILY) + 20
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["length"]


def test_include_usage_adds_a_last_chunk_with_usage_and_no_choices(stories):
    stream = stories.client().completions.create(model="m", prompt="Once upon a time", max_tokens=10, stream=True,
                                                 stream_options={"include_usage": True}, **GREEDY)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == LILY
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.prompt_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


def test_seeded_sampling_repeats_and_temperature_changes_the_text(stories):
    client = stories.client()
    kw = dict(max_tokens=30, temperature=1.0, top_p=0.9, seed=7)
    first, again = chat_text(client, "Once upon a time", **kw), chat_text(client, "Once upon a time", **kw)
    assert first == again and first != chat_text(client, "Once upon a time", max_tokens=30, **GREEDY)


# --- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("body, param, words", [
    ({"messages": [{"role": "user"}]}, "messages[0].content", "must be a string"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "is not one of"),
    ({"messages": []}, "messages", "non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature", "must be"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens", ">= 1"),
    ({"messages": [{"role": "user", "content": "hi"}], "frequency_penalty": 2.5}, "frequency_penalty", "in [-2, 2]"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n", "must be 1"),
    ({"messages": [{"role": "user", "content": "a " * 400}]}, "messages", "context is 256 tokens"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages[0].role", "user message was expected"),
])
def test_malformed_chat_request_is_a_400_in_openais_shape(stories, body, param, words):
    with pytest.raises(openai.BadRequestError) as e:
        stories.client().chat.completions.create(model="m", **body)
    error = e.value.body
    assert e.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == param and words in error["message"]


def test_body_that_is_not_json_is_a_400_and_unknown_route_a_404(stories):
    status, body = http(stories.url + "/v1/chat/completions", data=b"{not json", headers={"Content-Type": "application/json"})
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, body = http(stories.url + "/v1/engines")
    assert status == 404 and body["error"]["code"] == "not_found" and "/v1/engines" in body["error"]["message"]


@pytest.mark.parametrize("args, words", [
    (["--bundle", "/nonexistent/bundle"], "/nonexistent/bundle: not a directory"),
    (["--api-key-file", "/nonexistent/key"], "--api-key-file /nonexistent/key: cannot read it"),
    (["--queue-size", "0"], "--queue-size 0 must be >= 1"),
])
def test_bad_serve_options_are_one_line_and_exit_2(stories_bundle, args, words):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "board", "serve", "--bundle", str(stories_bundle), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and words in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_api_key_is_required_when_set_and_the_right_one_works(guarded):
    with pytest.raises(openai.AuthenticationError) as e:
        guarded.client(api_key="wrong").models.list()
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    status, _ = http(guarded.url + "/v1/models")  # no Authorization header at all
    assert status == 401
    assert [m.id for m in guarded.client().models.list().data] == ["slow-random-llama"]
    assert http(guarded.url + "/health")[0] == 200  # health and the page stay open for probes


# --- one engine, many clients ----------------------------------------------------------------
def _stream_a_little(server, n: int):
    """Open a long streamed answer, read n content chunks, return the still-open stream."""
    stream = server.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "go on"}], max_tokens=2000, stream=True, **GREEDY)
    got = 0
    for chunk in stream:
        got += bool(chunk.choices and chunk.choices[0].delta.content)
        if got >= n:
            return stream
    raise AssertionError("the answer ended before the test could act on it")


def _wait_idle(server, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = server.metrics()
        if m["edge_llm_requests_running"] == 0 and m["edge_llm_queue_depth"] == 0:
            return m
        time.sleep(0.05)
    raise AssertionError(f"engine still busy after {timeout} s: {m}")


def test_client_that_disconnects_mid_stream_frees_the_engine_at_once(guarded):
    before = _wait_idle(guarded)["edge_llm_completion_tokens_total"]
    stream = _stream_a_little(guarded, 3)
    stream.close()  # the HTTP connection goes away mid-answer
    after = _wait_idle(guarded, timeout=5)
    generated = after["edge_llm_completion_tokens_total"] - before
    assert 3 <= generated < 200, f"{generated} tokens generated of 2000 asked: the engine kept going"
    assert chat_text(guarded.client(), "hi", max_tokens=3)  # and it answers the next client


def test_client_that_leaves_before_a_whole_answer_frees_the_engine_too(guarded):
    before = _wait_idle(guarded)["edge_llm_completion_tokens_total"]
    body = json.dumps({"messages": [{"role": "user", "content": "go on"}], "max_tokens": 2000, "temperature": 0})
    conn = HTTPConnection(guarded.url.removeprefix("http://"), timeout=30)
    conn.request("POST", "/v1/chat/completions", body,
                 {"Content-Type": "application/json", "Authorization": f"Bearer {guarded.api_key}"})
    deadline = time.monotonic() + 10
    while guarded.metrics()["edge_llm_requests_running"] < 1:  # not streamed: nothing to read until the end
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.02)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    after = _wait_idle(guarded, timeout=5)
    generated = after["edge_llm_completion_tokens_total"] - before
    assert generated < 200, f"{generated} tokens generated of 2000 asked: the engine kept going"
    assert chat_text(guarded.client(), "hi", max_tokens=3)


def test_full_queue_answers_429_and_the_waiting_request_is_still_served(guarded):
    _wait_idle(guarded)
    running = _stream_a_little(guarded, 1)  # holds the engine
    waiting = {}
    t = threading.Thread(target=lambda: waiting.setdefault("text", chat_text(guarded.client(), "hi", max_tokens=3)))
    t.start()
    deadline = time.monotonic() + 10
    while guarded.metrics()["edge_llm_queue_depth"] < 1:
        assert time.monotonic() < deadline, "the second request never queued"
        time.sleep(0.02)
    with pytest.raises(openai.RateLimitError) as e:
        chat_text(guarded.client(), "hi", max_tokens=3)
    assert e.value.status_code == 429 and e.value.body["code"] == "queue_full"
    running.close()
    t.join(timeout=30)
    assert waiting.get("text"), "the queued request was not answered"


def test_three_concurrent_clients_are_all_answered_in_turn(stories):
    expected = chat_text(stories.client(), "Once upon a time", max_tokens=30, **GREEDY)
    before = _wait_idle(stories)
    answers, errors = [None] * 3, []

    def ask(i):
        try:
            answers[i] = chat_text(stories.client(), "Once upon a time", max_tokens=30, **GREEDY)
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and answers == [expected] * 3
    after = _wait_idle(stories)
    assert after["edge_llm_queue_wait_seconds_count"] - before["edge_llm_queue_wait_seconds_count"] == 3
    assert after['edge_llm_requests_total{endpoint="/v1/chat/completions",status="200"}'] - \
        before['edge_llm_requests_total{endpoint="/v1/chat/completions",status="200"}'] == 3
    assert after["edge_llm_completion_tokens_total"] - before["edge_llm_completion_tokens_total"] == 90


def test_follow_up_turn_reuses_the_cached_prompt_and_answers_as_a_fresh_prefill_would(stories):
    client = stories.client()
    first = [{"role": "user", "content": "Once upon a time"}]
    answer = chat_text(client, "Once upon a time", max_tokens=12, **GREEDY)
    follow = first + [{"role": "assistant", "content": answer}, {"role": "user", "content": " The dog said"}]
    before = stories.metrics()["edge_llm_prompt_cached_tokens_total"]
    warm = client.chat.completions.create(model="m", messages=follow, max_tokens=12, **GREEDY)
    cached = warm.usage.prompt_tokens_details.cached_tokens
    assert cached >= 15 and cached < warm.usage.prompt_tokens
    assert stories.metrics()["edge_llm_prompt_cached_tokens_total"] - before == cached
    chat_text(client, "Zebras", max_tokens=2, **GREEDY)  # another conversation takes the cache
    cold = client.chat.completions.create(model="m", messages=follow, max_tokens=12, **GREEDY)
    assert cold.usage.prompt_tokens_details.cached_tokens <= 1  # BOS at most
    assert cold.choices[0].message.content == warm.choices[0].message.content


def test_metrics_are_prometheus_text_with_every_promised_family(stories):
    status, text = http(stories.url + "/metrics")
    assert status == 200
    for family, kind in [("requests_total", "counter"), ("prompt_tokens_total", "counter"),
                         ("completion_tokens_total", "counter"), ("time_to_first_token_seconds", "histogram"),
                         ("decode_tokens_per_second", "gauge"), ("queue_depth", "gauge"),
                         ("kv_cache_occupancy_ratio", "gauge"), ("process_resident_memory_bytes", "gauge")]:
        assert f"# TYPE edge_llm_{family} {kind}" in text
    m = stories.metrics()
    assert m["edge_llm_kv_cache_slots"] == 256 and 0 < m["edge_llm_kv_cache_used_slots"] <= 256
    assert m["edge_llm_process_resident_memory_bytes"] > 10 * 2**20
    assert m['edge_llm_time_to_first_token_seconds_bucket{le="+Inf"}'] == m["edge_llm_time_to_first_token_seconds_count"] > 0


def test_health_is_503_with_the_reason_while_the_model_cannot_load(stories_bundle, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(stories_bundle, broken)
    (broken / "model.onnx").write_bytes(b"not a model")
    server = start_server(broken, tmp_path / "server.log", ready=False)
    try:
        status, body = http(server.url + "/health")
        while body.get("status") == "loading":
            time.sleep(0.1)
            status, body = http(server.url + "/health")
        assert status == 503 and body["status"] == "error" and "model.onnx" in body["error"]
        status, body = http(server.url + "/v1/completions", data=json.dumps({"prompt": "hi"}).encode())
        assert status == 503 and body["error"]["code"] == "model_not_loaded"
    finally:
        server.stop()
