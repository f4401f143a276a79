"""Chat templates rendered from the manifest's rules, turn by turn and as a whole."""
from board.chat_template import assistant_close, render_conversation, render_followup, render_opening
from board.manifest import CHAT_TEMPLATES

ZEPHYR, LLAMA2, CHATML = CHAT_TEMPLATES["zephyr"], CHAT_TEMPLATES["llama2"], CHAT_TEMPLATES["chatml"]


def test_zephyr_opening_and_followup():
    assert render_opening(ZEPHYR, "Be brief.", "Hi") == "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\n"
    assert render_opening(ZEPHYR, "", "Hi") == "<|user|>\nHi</s>\n<|assistant|>\n"
    assert render_followup(ZEPHYR, "More") == "</s>\n<|user|>\nMore</s>\n<|assistant|>\n"


def test_llama2_puts_the_system_prompt_inside_the_first_user_turn():
    assert render_opening(LLAMA2, "Be brief.", "Hi") == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"
    assert assistant_close(LLAMA2) == " </s><s>"
    assert render_followup(LLAMA2, "More") == " </s><s>[INST] More [/INST]"


def test_chatml_whole_conversation_equals_hf_style_rendering():
    pieces = render_conversation(CHATML, "S", [("Q1", "A1")], "Q2")
    assert "".join(pieces) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n"
        "A1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n"
    )


def test_turn_by_turn_pieces_concatenate_to_the_whole_rendering():
    turns = [("Q1", "A1"), ("Q2", "A2")]
    whole = "".join(render_conversation(ZEPHYR, "S", turns, "Q3"))
    incremental = render_opening(ZEPHYR, "S", "Q1") + "A1" + render_followup(ZEPHYR, "Q2") + "A2" + render_followup(ZEPHYR, "Q3")
    assert whole == incremental
    # and the whole matches the template's own per-message rules
    expected = ZEPHYR.system.replace("{content}", "S") + "".join(
        ZEPHYR.user.replace("{content}", q) + ZEPHYR.assistant.replace("{content}", a) for q, a in turns
    ) + ZEPHYR.user.replace("{content}", "Q3") + ZEPHYR.generation_prompt
    assert whole == expected


def test_none_template_is_plain_text():
    assert render_opening(CHAT_TEMPLATES["none"], "", "Once upon a time") == "Once upon a time"
