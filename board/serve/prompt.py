"""Turn a validated request into prompt token ids: chat messages through the bundle's chat template.

`conversation_text` checks the roles' order and renders through board.chat_template (the model's
own Jinja template when the bundle has one), the same path as `board chat`. The whole conversation is re-rendered every request; the engine's prefix
reuse (prompt caching) makes that cheap when it extends the previous one.
"""
from __future__ import annotations

from board.bundle import Bundle
from board.chat_template import chat_ids, conversation, render_messages
from board.manifest import ChatTemplate
from board.serve.protocol import CompletionRequest, bad


def conversation_text(template: ChatTemplate, messages: tuple) -> str:
    """The text of a conversation: leading system messages, alternating user/assistant turns, a last user turn."""
    i, system = 0, []
    while i < len(messages) and messages[i][0] == "system":
        system.append(messages[i][1])
        i += 1
    rest = messages[i:]
    for j, (role, _) in enumerate(rest):
        want = "user" if j % 2 == 0 else "assistant"
        if role != want:
            raise bad(f"messages[{i + j}] is a {role} message where a {want} message was expected: "
                      "send system messages first, then user and assistant turns alternating, ending with user",
                      f"messages[{i + j}].role")
    if not rest or rest[-1][0] != "user":
        raise bad("the last message must be a user message", "messages")
    turns = [(rest[k][1], rest[k + 1][1]) for k in range(0, len(rest) - 1, 2)]
    return render_messages(template, conversation("\n\n".join(system), turns, rest[-1][1]))


def prompt_ids(bundle: Bundle, request: CompletionRequest, context: int) -> list[int]:
    """Token ids of the request's prompt (BOS first when the manifest asks); 400 when it does not fit."""
    if request.kind == "chat":
        template = bundle.manifest.chat_template
        ids = chat_ids(bundle.tokenizer, template, conversation_text(template, request.messages))
    else:
        ids = bundle.tokenizer.encode(request.prompt, bos=True)
    if len(ids) >= context:
        param = "messages" if request.kind == "chat" else "prompt"
        raise bad(f"the prompt is {len(ids)} tokens; this model's context is {context} tokens "
                  "(prompt + answer): shorten it", param, "context_length_exceeded")
    return ids
