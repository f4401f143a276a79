"""A real chat model end to end: SmolLM2-135M-Instruct (fetched once, tests/support/models.py) built
W8A8 by the host CLI's pipeline answers on the board, and the board renders chat templates exactly
as transformers' apply_chat_template does, without transformers."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from board.manifest import ChatTemplate, load_manifest
from tests.support.paths import TINYSTORIES_TEXT, need

ROOT = Path(__file__).resolve().parents[1]
QWEN25_TEMPLATE = (Path(__file__).parent / "data/qwen2.5-chat-template.jinja").read_text()
QUESTION = "What is the capital of France? Answer in one sentence."
CONVERSATIONS = [
    [{"role": "user", "content": QUESTION}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Zähle: 1, 2\n3 \"quoted\""}],
]


# The tests on the W8A8 SmolLM2 build (~50 s) are slow: `make test-slow` runs them; CI's arm64 job also builds
# SmolLM2 and checks its chat answer token for token.
@pytest.fixture(scope="session")
def smollm2_bundle(smollm2, tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct W8A8 (u8u8), built from its Hugging Face directory with a short calibration."""
    from host.build import BuildConfig, build

    out = tmp_path_factory.mktemp("smollm2") / "w8a8"
    config = BuildConfig(model=str(smollm2.hf_dir), calib=need(TINYSTORIES_TEXT), quant="w8a8", out=out, kv_len=128,
                         calib_samples=2, calib_seq_len=32, eval_tokens=64)
    return build(config).path


def board_render(template: ChatTemplate, cases: list) -> list[str]:
    """render_messages of each (messages, add_generation_prompt) in a process where transformers cannot import."""
    code = ("import json, sys; sys.modules['transformers'] = None\n"
            "from board.chat_template import render_messages\nfrom board.manifest import ChatTemplate\n"
            "data = json.load(sys.stdin); tpl = ChatTemplate(**data['template'])\n"
            "print(json.dumps([render_messages(tpl, m, g) for m, g in data['cases']]))")
    run = subprocess.run([sys.executable, "-c", code], input=json.dumps({"template": asdict(template), "cases": cases}),
                         capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(run.stdout)


def transformers_render(hf_dir: Path, jinja: str | None, cases: list) -> list[str]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    return [tok.apply_chat_template(m, chat_template=jinja, tokenize=False, add_generation_prompt=g) for m, g in cases]


CASES = [[m, g] for m in CONVERSATIONS for g in (True, False)]


@pytest.mark.slow
def test_bundle_records_the_models_template_and_renders_it_as_transformers_does(smollm2, smollm2_bundle):
    template = load_manifest(smollm2_bundle).chat_template
    assert (template.name, template.source) == ("chatml", "chat_template.jinja")
    assert template.jinja == (smollm2.hf_dir / "chat_template.jinja").read_text()
    want = transformers_render(smollm2.hf_dir, None, CASES)
    assert board_render(template, CASES) == want
    assert want[0].startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_qwen25_template_renders_as_transformers_does(smollm2):
    template = ChatTemplate(name="chatml", jinja=QWEN25_TEMPLATE, source="test")
    want = transformers_render(smollm2.hf_dir, QWEN25_TEMPLATE, CASES)
    assert board_render(template, CASES) == want
    assert want[0] == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                       f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.slow
def test_w8a8_smollm2_answers_the_capital_of_france_greedily(smollm2_bundle):
    run = subprocess.run([sys.executable, "-m", "board", "generate", "--bundle", str(smollm2_bundle), "--chat", "--greedy",
                          "--prompt", QUESTION, "--json"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert "Paris" in result["text"] and result["finish_reason"] == "eos", result


@pytest.mark.slow
def test_chat_session_feeds_only_the_new_turn_and_keeps_the_conversation(smollm2_bundle):
    import numpy as np

    from board.backends import open_backend
    from board.bundle import open_bundle
    from board.chat import ChatSession
    from board.chat_template import chat_ids
    from board.engine import Engine
    from board.generate import GenerateConfig
    from board.sampling import SamplingConfig

    bundle = open_bundle(smollm2_bundle)
    with open_backend(bundle, "onnxruntime") as backend:
        session = ChatSession(Engine(backend, bundle.manifest.arch, bundle.manifest.graph), bundle.tokenizer, bundle.manifest.chat_template,
                              GenerateConfig(24, SamplingConfig(temperature=0.0)), np.random.default_rng(0))
        first = session.ask(QUESTION)
        fed_before = len(session.engine.fed)
        second = session.ask("And of Italy?")
    assert "Paris" in first.text and "Rome" in second.text
    assert session.rebuilds == 0 and second.prompt_tokens < fed_before  # only the new suffix was fed
    # the cache holds exactly the ids of the whole conversation encoded at once, then the answer
    whole = chat_ids(bundle.tokenizer, session.template, session.messages[:2] + [{"role": "user", "content": "And of Italy?"}])
    assert session.engine.fed[: len(whole)] == whole
    assert session.engine.fed[len(whole) :] == second.tokens[: len(second.tokens) - len(second.unfed)]
    assert [m["role"] for m in session.messages] == ["user", "assistant"] * 2
