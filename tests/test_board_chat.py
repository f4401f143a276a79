"""The chat loop: Ctrl-C stops the answer and not the session; /reset; /exit; Ctrl-D."""
import io

import numpy as np
import pytest

from board.backends import open_backend
from board.bundle import open_bundle
from board.chat import HELP, ChatSession, run_repl
from board.engine import Engine
from board.generate import GenerateConfig
from board.sampling import SamplingConfig


class InterruptingOutput(io.StringIO):
    """Raises KeyboardInterrupt (as Ctrl-C would) at the n-th write, once."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.writes = at, 0

    def write(self, s):
        self.writes += 1
        if self.writes == self.at:
            raise KeyboardInterrupt
        return super().write(s)


@pytest.fixture()
def session(tiny_bundle):
    bundle = open_bundle(tiny_bundle)
    with open_backend(bundle, "onnxruntime", threads=1) as backend:
        engine = Engine(backend, bundle.manifest.arch, bundle.manifest.graph)
        cfg = GenerateConfig(30, SamplingConfig(temperature=1.0, top_k=0, top_p=1.0))
        yield ChatSession(engine, bundle.tokenizer, bundle.manifest.chat_template, cfg, np.random.default_rng(5))


def scripted(lines):
    it = iter(lines)

    def read(prompt):
        line = next(it)
        if isinstance(line, BaseException):
            raise line
        return line

    return read


def test_ctrl_c_stops_the_answer_and_the_session_goes_on(session):
    out = InterruptingOutput(at=4)  # help line, then answer pieces: the 3rd piece is "interrupted"
    status = run_repl(session, scripted(["Once upon a time", "The big red ball", "/exit"]), out)
    assert status == 0
    assert "[stopped]" in out.getvalue()
    assert len(session.messages) == 4  # both questions answered, the first one cut short
    assert 0 < len(session.messages[1]["content"]) and session.engine.cache.next_pos > 0


def test_an_answer_cut_at_the_token_budget_ends_with_length(session):
    out = io.StringIO()
    assert run_repl(session, scripted(["Once upon a time", "/exit"]), out) == 0
    user, answer = (m["content"] for m in session.messages)
    # the random model runs to the 30-token budget (no EOS drawn with this seed): the mark follows the answer
    assert answer and out.getvalue() == f"{HELP}\n{answer} [length]\n"


def test_reset_clears_the_conversation_and_ctrl_d_exits(session):
    out = io.StringIO()
    status = run_repl(session, scripted(["Once upon a time", "/reset", KeyboardInterrupt(), "", "Lily", EOFError()]), out)
    assert status == 0
    assert "[conversation cleared]" in out.getvalue()
    assert [m["content"] for m in session.messages[::2]] == ["Lily"]
    # after the reset the cache restarted: it holds only the second conversation
    assert session.engine.fed[0] == session.tokenizer.tokens.bos_id
    assert len(session.engine.fed) < 2 * 40


def test_interrupted_answer_is_resumable(session):
    calls = {"n": 0}

    def stop_after_two(piece):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    first = session.ask("Once upon a time", on_text=stop_after_two)
    assert first.finish_reason == "interrupted" and first.tokens
    second = session.ask("She loved to play")
    assert second.finish_reason in ("length", "eos")
    # every token of the cut answer is in the cache, once, right after the first prompt
    n = first.prompt_tokens
    fed = session.engine.fed
    assert fed[n : n + len(first.tokens)] == first.tokens
    first_fed = len(first.tokens) - len(first.unfed)
    second_fed = second.prompt_tokens + len(second.tokens) - len(second.unfed)
    assert len(fed) == n + first_fed + second_fed


def test_ctrl_c_during_the_prompt_keeps_the_history(session):
    session.cfg = GenerateConfig(8, session.cfg.sampling)  # short answers: the history fits the window
    session.ask("Once upon a time")
    feed = session.engine.feed

    def interrupted_feed(ids, all_logits=False):
        session.engine.feed = feed  # only the next prompt is cut
        feed(ids[: len(ids) // 2])
        raise KeyboardInterrupt

    session.engine.feed = interrupted_feed
    cut = session.ask("Lily saw a big red ball and her mom said")
    assert cut.finish_reason == "interrupted" and not cut.tokens
    assert len(session.messages) == 2  # the cut question is not part of the history
    result = session.ask("The happy dog went home")
    # the engine kept the cached history (reuse_prefix) and dropped the half prompt: no rebuild
    assert result.finish_reason in ("length", "eos") and session.rebuilds == 0
    assert [m["content"] for m in session.messages[::2]] == ["Once upon a time", "The happy dog went home"]
    text = session.tokenizer.decode(session.engine.fed)
    assert "Lily saw" not in text and text.startswith("Once upon a time")


def test_a_rebuild_caps_the_answer_and_never_cuts_the_message(session):
    session.cfg = GenerateConfig(8, session.cfg.sampling)
    session.ask("Once upon a time")
    # an answer budget near the position range forces a rebuild; today's code kept only the last 7 ids
    session.cfg = GenerateConfig(505, session.cfg.sampling)
    notices = []
    message = "Lily saw a big red ball and her mom said the happy dog went home with her friends"
    result = session.ask(message, on_notice=notices.append)
    assert session.rebuilds == 1
    kv_len = session.engine.cache.kv_len
    expected = session.tokenizer.encode(message)
    prompt = session.engine.fed[: result.prompt_tokens]
    assert prompt[-len(expected):] == expected and prompt[0] == session.tokenizer.tokens.bos_id
    budget = kv_len - result.prompt_tokens
    assert len(result.tokens) <= budget and result.finish_reason in ("length", "eos")
    assert notices == [f"[answer limited to {budget} tokens so that your {result.prompt_tokens}-token message "
                       f"fits the {kv_len}-token window]"]


def test_a_message_that_fills_the_window_is_refused_and_the_session_goes_on(session):
    session.cfg = GenerateConfig(8, session.cfg.sampling)
    session.ask("Once")
    session.cfg = GenerateConfig(505, session.cfg.sampling)  # every next turn must rebuild
    long = " ".join(["happy dog"] * 60)
    out = io.StringIO()
    assert run_repl(session, scripted([long, "Lily", "/exit"]), out) == 0
    assert "shorten it" in out.getvalue() and session.messages[-2]["content"] == "Lily"
