"""The ``llm`` namespace's work on a model's tokenizer and template, nothing generated:
``applyPromptTemplate`` (``model.apply_prompt_template(chat)``), ``tokenize`` and ``countTokens``.

They go through the same TokenTools as llama-server's ``/tokenize`` and ``/apply-template``
(service/token_tools.py): ``tokenize`` is ``/tokenize`` with its defaults (no BOS added, special
tokens parsed), and ``applyPromptTemplate`` gives the text a ``predict`` of the same chat would
prefill (tools from ``opts.toolDefinitions`` or the config's, reasoning settings applied), which is
what ``/apply-template`` gives for the same chat (images shown as ``<image N: ...>``). The
tokenizer's own BOS is never written in it, so ``opts.omitBosToken`` and ``omitEosToken`` change
nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from studiolo.api.lmstudio_sdk.endpoints import Call, namespace
from studiolo.api.lmstudio_sdk.handlers.chat_history import chat_messages
from studiolo.api.lmstudio_sdk.handlers.llm_tools import offered, tool_array
from studiolo.api.lmstudio_sdk.handlers.predict import THINKING_KEY, file_bytes, read_config, templated_text
from studiolo.api.lmstudio_sdk.handlers.specifiers import parse_specifier, resolve
from studiolo.domain.errors import InvalidRequest
from studiolo.service.token_tools import TokenTools
from studiolo.service.types import ChatRequest

llm = namespace("llm")


@llm.rpc("applyPromptTemplate")
async def apply_prompt_template(call: Call, parameter: Any) -> dict[str, Any]:
    request = _object(parameter)
    config = await read_config(request.get("predictionConfigStack"))
    name = _model_name(call, request)
    messages = chat_messages(request.get("history"), file_bytes(call.client))
    if config.template is not None:
        return {"formatted": templated_text(config.template, messages)}
    opts = request.get("opts") or {}
    if not isinstance(opts, dict):
        raise InvalidRequest("'opts' must be an object", "opts")
    tools = config.tools
    if opts.get("toolDefinitions") is not None:
        definitions = tool_array(opts["toolDefinitions"], "opts.toolDefinitions")
        # llguidance checks the schemas: off the event loop
        tools = await asyncio.to_thread(offered, definitions, None, "opts.toolDefinitions")
    chat = ChatRequest(name, messages, config.options, tools=tools, prompt_field="history",
                       reasoning_option=config.reasoning_option, reasoning_param=THINKING_KEY)
    prompt = await _tools(call).chat_prompt(chat)
    return {"formatted": prompt.text}


@llm.rpc("tokenize")
async def tokenize(call: Call, parameter: Any) -> dict[str, Any]:
    request = _object(parameter)
    return {"tokens": await _token_ids(call, request)}


@llm.rpc("countTokens")
async def count_tokens(call: Call, parameter: Any) -> dict[str, Any]:
    request = _object(parameter)
    return {"tokenCount": len(await _token_ids(call, request))}


async def _token_ids(call: Call, request: dict[str, Any]) -> list[int]:
    text = request.get("inputString")
    if not isinstance(text, str):
        raise InvalidRequest("'inputString' must be a string", "inputString")
    pieces = await _tools(call).tokenize(_model_name(call, request), text, add_special=False, parse_special=True)
    return [piece.id for piece in pieces]


def _model_name(call: Call, request: dict[str, Any]) -> str:
    return resolve(call.state.models, parse_specifier(request.get("specifier"), "specifier"), "llm").name


def _object(parameter: Any) -> dict[str, Any]:
    if not isinstance(parameter, dict):
        raise InvalidRequest("the call's parameter must be an object", "parameter")
    return parameter


def _tools(call: Call) -> TokenTools:
    return call.state.token_tools

