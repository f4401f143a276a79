"""A bundle's Jinja chat template, rendered on the board the way transformers' apply_chat_template does.

The template comes from the model (tokenizer_config.json, chat_template.jinja or GGUF metadata), or
is a built-in one (board/chat_templates/) for a model without; a model's is untrusted code: it runs in jinja2's ImmutableSandboxedEnvironment with the environment
transformers gives it (trim_blocks, lstrip_blocks, loop controls, `tojson` without HTML escaping,
`raise_exception`, `strftime_now`, the special-token strings), so the same messages render to
the same text on the board as on the host.
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from board.errors import BoardError


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja's own tojson escapes HTML characters; chat templates expect plain JSON
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template (cached: a chat renders the same source every turn)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise BoardError(f"the bundle's chat template does not parse ({e.message}, line {e.lineno}); rebuild the bundle") from None


def render_jinja(source: str, messages: list[dict], add_generation_prompt: bool, special_tokens: dict) -> str:
    """Text of `messages` ([{"role", "content"}]) under the template; BoardError on a template's own refusal."""
    template = compile_template(source)
    try:
        return template.render(messages=[dict(m) for m in messages], tools=None, documents=None,
                               add_generation_prompt=add_generation_prompt, **special_tokens)
    except jinja2.TemplateError as e:  # raise_exception(...) in the template, or a sandbox violation
        raise BoardError(f"the chat template refused the conversation: {e}") from None
