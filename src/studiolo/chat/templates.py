"""Turning chat messages into a prompt with the model's chat template.

A GGUF usually carries its Jinja template (``tokenizer.chat_template``); we render it in
Jinja's immutable sandbox with the helpers Hugging Face templates expect
(``raise_exception``, ``strftime_now``, a ``tojson`` that keeps non-ASCII text). When a model
has no template, its family's built-in one is used (Gemma), and ChatML as the last resort.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from studiolo.domain.errors import InvalidRequest


class TemplateError(InvalidRequest):
    """The template refused the conversation (e.g. ``raise_exception``) or failed to render."""
    code = "chat_template_error"

    param = "messages"  # the request field the conversation came from; the service may say "input"


class RenderTooLong(ValueError):
    """The rendered prompt passed ``max_chars``: rendering stopped there."""

    def __init__(self, max_chars: int):
        super().__init__(f"the prompt as the chat template formats it is longer than {max_chars} characters")
        self.max_chars = max_chars


class RenderStopped(Exception):
    """``should_stop`` said so (the client left) while the template was rendering."""


PIECES_PER_CHECK = 256  # rendered pieces between two checks of the bounds


# Gemma folds system text into the first user turn and calls the assistant "model".
GEMMA_TEMPLATE = """{{ bos_token }}
{%- set system_text = namespace(value="") -%}
{%- for message in messages -%}
  {%- if message.role == "system" -%}
    {%- set system_text.value = system_text.value + message.content + "\\n\\n" -%}
  {%- else -%}
    {{- "<start_of_turn>" + ("model" if message.role == "assistant" else "user") + "\\n" -}}
    {%- if message.role != "assistant" -%}
      {{- system_text.value -}}
      {%- set system_text.value = "" -%}
    {%- endif -%}
    {{- (message.content or "") | trim -}}
    {{- "<end_of_turn>\\n" -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- "<start_of_turn>model\\n" -}}
{%- endif -%}"""

CHATML_TEMPLATE = """{%- for message in messages -%}
  {{- "<|im_start|>" + message.role + "\\n" + (message.content or "") + "<|im_end|>\\n" -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- "<|im_start|>assistant\\n" -}}
{%- endif -%}"""

_FAMILY_TEMPLATES = {
    "gemma": GEMMA_TEMPLATE,
    "gemma2": GEMMA_TEMPLATE,
    "gemma3": GEMMA_TEMPLATE,
    "gemma3n": GEMMA_TEMPLATE,
}


def builtin_template_for(architecture: str) -> str:
    return _FAMILY_TEMPLATES.get(architecture, CHATML_TEMPLATE)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


@dataclass(frozen=True)
class ChatTemplate:
    source: str
    bos_token: str
    eos_token: str

    def render(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
               max_chars: int | None = None, should_stop: Callable[[], bool] | None = None,
               **variables: Any) -> str:
        """The prompt text; a template is a program, so its output is bounded (``max_chars``) and
        the rendering can be stopped (``should_stop``) as it goes, piece by piece."""
        try:
            template = _compile(self.source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"the model's chat template does not compile: {exc}") from exc
        try:
            pieces = template.generate(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **variables,
            )
            return _joined(pieces, max_chars, should_stop)
        except (TemplateError, RenderTooLong, RenderStopped):
            raise
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the model's chat template failed: {exc}") from exc
        except (TypeError, KeyError, IndexError, AttributeError, ValueError) as exc:
            raise TemplateError(f"the model's chat template failed on these messages: {exc}") from exc


def _joined(pieces: Iterator[str], max_chars: int | None, should_stop: Callable[[], bool] | None) -> str:
    out: list[str] = []
    length = 0
    for count, piece in enumerate(pieces, start=1):
        out.append(piece)
        length += len(piece)
        if max_chars is not None and length > max_chars:
            raise RenderTooLong(max_chars)
        if should_stop is not None and count % PIECES_PER_CHECK == 0 and should_stop():
            raise RenderStopped()
    return "".join(out)


# The variables studiolo itself gives every render (and the helpers it defines): a request's
# ``chat_template_kwargs`` cannot replace them.
RESERVED_VARIABLES = frozenset({"messages", "tools", "add_generation_prompt", "bos_token", "eos_token",
                                "raise_exception", "strftime_now"})


def checked_template_kwargs(kwargs: Mapping[str, Any] | None, param: str = "chat_template_kwargs") -> dict[str, Any]:
    """A request's ``chat_template_kwargs`` as extra render variables (JSON values; the sandbox keeps
    the template from changing them), refused when one would replace what studiolo gives."""
    if not kwargs:
        return {}
    for name in kwargs:
        if not isinstance(name, str) or not name.isidentifier():
            raise InvalidRequest(f"chat_template_kwargs key {name!r} is not a template variable name", param)
        if name in RESERVED_VARIABLES:
            raise InvalidRequest(f"chat_template_kwargs cannot set '{name}': studiolo sets it from the request", param)
    return dict(kwargs)
