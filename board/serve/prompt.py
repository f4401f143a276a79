"""Turn a validated request into prompt token ids: chat messages through the bundle's chat template.

The messages reach the template as the request's OpenAI-style dicts (board.chat_template, the same
path as `board chat`). The whole conversation is re-rendered every request; the engine's prefix
reuse (prompt caching) makes that cheap when it extends the previous one.
"""
from __future__ import annotations

from board.bundle import Bundle
from board.chat_template import chat_ids
from board.serve.protocol import CompletionRequest, bad


def check_turns(messages: tuple) -> None:
    """400 unless the messages are system messages first, then user and assistant alternating, ending with user."""
    i = 0
    while i < len(messages) and messages[i]["role"] == "system":
        i += 1
    for j, message in enumerate(messages[i:]):
        want = "user" if j % 2 == 0 else "assistant"
        if message["role"] != want:
            raise bad(f"messages[{i + j}] is a {message['role']} message where a {want} message was expected: "
                      "send system messages first, then user and assistant turns alternating, ending with user",
                      f"messages[{i + j}].role")
    if i == len(messages) or messages[-1]["role"] != "user":
        raise bad("the last message must be a user message", "messages")


def prompt_ids(bundle: Bundle, request: CompletionRequest, context: int) -> list[int]:
    """Token ids of the request's prompt (BOS first when the manifest asks); 400 when it does not fit."""
    if request.kind == "chat":
        check_turns(request.messages)
        ids = chat_ids(bundle.tokenizer, bundle.manifest.chat_template, list(request.messages))
    else:
        ids = bundle.tokenizer.encode(request.prompt, bos=True)
    if len(ids) >= context:
        param = "messages" if request.kind == "chat" else "prompt"
        raise bad(f"the prompt is {len(ids)} tokens; this model's context is {context} tokens "
                  "(prompt + answer): shorten it", param, "context_length_exceeded")
    return ids
