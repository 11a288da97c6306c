"""The ``llm`` namespace's predictions: ``predict`` (``model.respond()``, ``respond_stream()``,
``act()``, and the Python SDK's ``complete()``) and ``completeRawText`` (the JavaScript SDK's
``complete()``).

A prediction goes the way a chat completion goes: its KV config stack becomes the domain's options
(kv_config.py), its history the domain's messages (chat_history.py), and the generation service
renders the chat with the model's template (tools in its native format), loads the model just in time
and generates; the events come back as the channel's packets (prediction_packets.py). A prompt
template sent in place of the model's (the Python SDK's ``complete()`` sends one that joins the
messages) makes the prediction a completion of the text it gives, as ``/v1/completions`` runs it.

The client's ``{type: "cancel"}`` stops the generation: the channel then ends with ``success`` and
the stop reason ``userStopped``; a model unloaded under it ends it with ``modelUnloaded``. A client
that closes its socket cancels the channel's task, and the generation with it (its sequence is freed
at once).
"""

from __future__ import annotations

import asyncio
from typing import Any

from studiolo.api.lmstudio_sdk.endpoints import Channel, ChannelGone, Client, namespace
from studiolo.api.lmstudio_sdk.handlers.chat_history import FileBytes, chat_messages
from studiolo.api.lmstudio_sdk.handlers.files import image_bytes
from studiolo.api.lmstudio_sdk.handlers.kv_config import PREFIX, PredictionConfig, PromptTemplate, prediction_config
from studiolo.api.lmstudio_sdk.handlers.load_config import instance_load_config
from studiolo.api.lmstudio_sdk.handlers.model_info import instance_info
from studiolo.api.lmstudio_sdk.handlers.prediction_packets import PacketWriter, stats, unloaded_stats
from studiolo.api.lmstudio_sdk.handlers.specifiers import parse_specifier, resolve
from studiolo.domain.chat import ChatMessage
from studiolo.domain.errors import InvalidRequest
from studiolo.service.generation import Generation, GenerationService, UnloadedWhileGenerating
from studiolo.service.models import instance_status
from studiolo.service.types import ChatRequest, CompletionRequest

llm = namespace("llm")

THINKING_KEY = PREFIX + "reasoning.enableThinking"
TEMPLATE_KEY = PREFIX + "promptTemplate"


@llm.channel("predict")
async def predict(channel: Channel, parameter: Any) -> None:
    request = _object(parameter)
    config = await read_config(request.get("predictionConfigStack"), _preset(request))
    name = model_name(channel, request.get("modelSpecifier"))
    messages = chat_messages(request.get("history"), file_bytes(channel.client))
    service = _service(channel)
    if config.template is not None:  # a completion of the text the client's template gives
        prompt = templated_text(config.template, messages)
        generation = await service.complete(CompletionRequest(name, [prompt], config.options))
    else:
        generation = await service.chat(ChatRequest(
            name, messages, config.options, tools=config.tools, prompt_field="history",
            reasoning_option=config.reasoning_option, reasoning_param=THINKING_KEY,
            reasoning_output=config.reasoning_output))
    await stream_prediction(channel, generation, config)


@llm.channel("completeRawText")
async def complete_raw_text(channel: Channel, parameter: Any) -> None:
    request = _object(parameter)
    prompt = request.get("rawPrompt")
    if not isinstance(prompt, str):
        raise InvalidRequest("'rawPrompt' must be a string: the text to complete", "rawPrompt")
    config = await read_config(request.get("predictionConfigStack"), _preset(request))
    if config.tools is not None and config.tools.active:
        raise InvalidRequest("a raw completion has no tools: the model's template is not applied",
                             PREFIX + "tools")
    name = model_name(channel, request.get("modelSpecifier"))
    generation = await _service(channel).complete(CompletionRequest(name, [prompt], config.options))
    await stream_prediction(channel, generation, config)


async def stream_prediction(channel: Channel, generation: Generation, config: PredictionConfig) -> None:
    """The generation's packets, then ``success``; a cancel from the client stops it."""
    writer = PacketWriter(generation.prompt_tokens)
    watcher = asyncio.create_task(_cancel_when_asked(channel, generation))
    unloaded = False
    try:
        async for event in generation.events():
            for packet in writer.packets(event):
                await channel.send(packet)
    except UnloadedWhileGenerating:  # LM Studio's stop reason modelUnloaded: the reply so far stands
        unloaded = True
        for packet in writer.close():
            await channel.send(packet)
    finally:
        watcher.cancel()
        generation.cancel()
    instance = instance_status(generation.instance)
    await channel.send({
        "type": "success",
        "stats": unloaded_stats(generation) if unloaded else stats(generation, writer.finished),
        "modelInfo": instance_info(instance),
        "loadModelConfig": instance_load_config(instance, "llm"),
        "predictionConfig": {"fields": [{"key": key, "value": value} for key, value in config.fields.items()]},
    })


async def _cancel_when_asked(channel: Channel, generation: Generation) -> None:
    try:
        while True:
            message = await channel.receive()
            if message.get("type") == "cancel":
                generation.cancel()
                return
    except ChannelGone:  # the socket closed: the session cancels the prediction's task
        return


async def read_config(stack: Any, preset: str | None = None) -> PredictionConfig:
    """The stack read off the event loop: tools' schemas and a structured output's are checked with
    llguidance, bounded but up to a second (as chat completions read their bodies)."""
    return await asyncio.to_thread(prediction_config, stack, preset)


def templated_text(template: PromptTemplate, messages: list[ChatMessage]) -> str:
    """The prompt a client's template gives: the messages' contents joined (``raw``), or each message
    wrapped in LM Studio's manual before/after strings."""
    if any(message.images for message in messages):
        raise InvalidRequest("images need the model's own prompt template", TEMPLATE_KEY)
    if template.kind == "raw":
        return "".join(message.content or "" for message in messages)
    parts = template.manual
    text = []
    for message in messages:
        role = {"system": "System", "user": "User", "assistant": "Assistant"}.get(message.role)
        if role is None:
            raise InvalidRequest("a manual prompt template has no place for tool results", TEMPLATE_KEY)
        text.append(f"{parts['before' + role]}{message.content or ''}{parts['after' + role]}")
    return "".join(text) + parts["beforeAssistant"]


def model_name(channel: Channel, specifier: Any, field: str = "modelSpecifier") -> str:
    """What the service takes as the request's model: the instance the specifier names, or the
    model on disk, which the service loads just in time as for a REST request."""
    return resolve(channel.state.models, parse_specifier(specifier, field), "llm").name


def _object(parameter: Any) -> dict[str, Any]:
    if not isinstance(parameter, dict):
        raise InvalidRequest("the channel's creation parameter must be an object", "creationParameter")
    return parameter


def _preset(request: dict[str, Any]) -> str | None:
    preset = request.get("fuzzyPresetIdentifier")
    if preset is not None and (not isinstance(preset, str) or not preset):
        raise InvalidRequest("'fuzzyPresetIdentifier' must be a preset's name", "fuzzyPresetIdentifier")
    return preset


def _service(channel: Channel) -> GenerationService:
    return channel.state.service


def file_bytes(client: Client) -> FileBytes:
    """How the client's image parts find their bytes: the images it uploaded (handlers/files.py)."""
    return lambda identifier, param: image_bytes(client.identifier, identifier, param)
