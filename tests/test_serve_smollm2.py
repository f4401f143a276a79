"""The real chat model through the server: SmolLM2-135M-Instruct W8A8 answers the `openai` client with Paris.

Slow (the W8A8 build of a 135M model takes minutes on 2 cores): `make test-slow`. Skips, naming why,
when the model cannot be fetched (tests/support/models.py).
"""
from __future__ import annotations

import pytest

from tests.support.paths import WIKITEXT, need
from tests.support.serve import start_server

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def smollm2_server(smollm2, tmp_path_factory):
    from host.build import BuildConfig, build

    out = tmp_path_factory.mktemp("smollm2")
    bundle = build(BuildConfig(model=str(smollm2.hf_dir), calib=need(WIKITEXT), quant="w8a8", kv_len=256,
                               chat_template="chatml", out=out / "bundle")).path
    server = start_server(bundle, out / "server.log")
    yield server
    server.stop()


def test_smollm2_w8a8_answers_paris_plain_and_streamed_identically(smollm2_server):
    client = smollm2_server.client()
    plain = client.chat.completions.create(model="m", messages=QUESTION, temperature=0, max_tokens=40)
    chunks = client.chat.completions.create(model="m", messages=QUESTION, temperature=0, max_tokens=40, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert plain.choices[0].message.content == "The capital of France is Paris."
    assert plain.choices[0].finish_reason == "stop" and streamed == plain.choices[0].message.content
