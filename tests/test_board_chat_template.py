"""The built-in chat templates (board/chat_templates/*.jinja): the exact text each renders through the one
Jinja engine, for a model that has no template of its own."""
import pytest

from board.chat_template import render_messages
from board.errors import BoardError
from board.manifest import BUILTIN_TEMPLATES, BundleError, ChatTemplate, builtin_chat_template

SYSTEM = [{"role": "system", "content": "Be brief."}]
TWO_TURNS = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": " A1"}, {"role": "user", "content": "Q2"}]


def render(name, messages, add_generation_prompt=True):
    return render_messages(builtin_chat_template(name), messages, add_generation_prompt)


def test_zephyr_renders_one_block_per_message_then_the_assistant_prompt():
    assert render("zephyr", SYSTEM + TWO_TURNS) == (
        "<|system|>\nBe brief.</s>\n<|user|>\nQ1</s>\n<|assistant|>\n A1</s>\n<|user|>\nQ2</s>\n<|assistant|>\n")
    assert render("zephyr", TWO_TURNS[:1], add_generation_prompt=False) == "<|user|>\nQ1</s>\n"


def test_llama2_puts_the_system_prompt_inside_the_first_user_turn_and_closes_answers():
    assert render("llama2", SYSTEM + TWO_TURNS) == (
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nQ1 [/INST] A1 </s><s>[INST] Q2 [/INST]")
    # the answer is trimmed as Meta's template does: with or without the model's leading space, one space
    no_space = [dict(m, content=m["content"].strip()) for m in TWO_TURNS]
    assert render("llama2", no_space) == render("llama2", TWO_TURNS) == "[INST] Q1 [/INST] A1 </s><s>[INST] Q2 [/INST]"


def test_chatml_renders_as_hf_chatml_does():
    assert render("chatml", SYSTEM + TWO_TURNS) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n"
        " A1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n")


def test_none_is_the_plain_text_of_the_turns_without_the_system_prompt():
    assert render("none", SYSTEM + [{"role": "user", "content": "Once upon a time"}]) == "Once upon a time"
    assert render("none", TWO_TURNS) == "Q1 A1Q2"


@pytest.mark.parametrize("name", BUILTIN_TEMPLATES)
def test_a_longer_conversation_extends_the_shorter_ones_text(name):
    # what lets the engine reuse its cache turn after turn: the history renders the same inside a longer chat
    shorter = render(name, SYSTEM + TWO_TURNS[:1])
    assert render(name, SYSTEM + TWO_TURNS).startswith(shorter) and len(shorter) > 0


def test_an_unknown_built_in_name_and_a_template_that_does_not_parse_are_refused():
    with pytest.raises(BundleError, match="no built-in chat template 'vicuna'; use one of zephyr, llama2, chatml, none"):
        builtin_chat_template("vicuna")
    with pytest.raises(BoardError, match="chat template does not parse"):
        render_messages(ChatTemplate(name="none", jinja="{% for %}"), TWO_TURNS)
