"""Presets and per-model defaults applied to a request: request > preset > model defaults > server defaults.

Routers pass a request's ``preset`` on untouched (``GenerationOptions.preset``) together with the
names of the settings the request gave itself (``GenerationOptions.given``, built with ``given``):
those are kept; every other setting the preset sets replaces the server's default, and failing
that the model's defaults (``STUDIOLO_HOME/model-settings/<publisher>/<repo>.json``, which may also
name a default preset for requests naming none). A preset's system prompt becomes the first message
of a chat that has no system message; a chat that has one keeps its own (the request wins).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from studiolo.domain.chat import ChatMessage
from studiolo.domain.errors import InvalidRequest
from studiolo.domain.presets import NO_LIMIT, ModelDefaults, Preset, Settings
from studiolo.engine.constraints import ConstraintSpec
from studiolo.models.manager import InvalidModelSettings
from studiolo.service.types import ChatRequest, GenerationOptions
from studiolo.store.settings_files import InvalidSettingsFile, find_preset, read_model_defaults

log = logging.getLogger(__name__)

SAMPLING_SETTINGS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty")
# the names ``GenerationOptions.given`` holds: a preset never replaces these when the request set them
GIVEN_NAMES = frozenset({*SAMPLING_SETTINGS, "max_tokens", "stop", "constraint"})


class UnknownPreset(InvalidRequest):
    code, param = "preset_not_found", "preset"


class InvalidPreset(InvalidRequest):
    code, param = "invalid_preset", "preset"


def given(**values: Any) -> frozenset[str]:
    """The settings a request gave (a value that is not None), for ``GenerationOptions.given``."""
    names = frozenset(name for name, value in values.items() if value is not None)
    assert names <= GIVEN_NAMES, f"not a preset setting: {sorted(names - GIVEN_NAMES)}"
    return names


def preset_named(name: str) -> Preset:
    """The preset a request names; a 400 naming ``preset`` when there is none of that name."""
    try:
        preset = find_preset(name)
    except InvalidSettingsFile as exc:
        raise InvalidPreset(f"preset '{name}' cannot be read: {exc}") from None
    if preset is None:
        raise UnknownPreset(f"no preset named '{name}' (see `studiolo preset ls`; import one with "
                            "`studiolo preset import <file>`)")
    return preset


def request_preset(options: GenerationOptions) -> Preset | None:
    """The request's own preset (checked before any model loads), or None."""
    return preset_named(options.preset) if options.preset else None


def model_defaults(model_key: str) -> ModelDefaults:
    try:
        return read_model_defaults(model_key)
    except InvalidSettingsFile as exc:
        raise InvalidModelSettings(f"the settings of model '{model_key}' cannot be read: {exc}") from None


def load_context_length(requested: int | None, preset: Preset | None) -> int | None:
    """The context a JIT load gets from the request or its preset (None: the model's defaults decide)."""
    if requested is not None:
        return requested
    return preset.settings.context_length if preset is not None else None


def effective_settings(preset: Preset | None, model_key: str) -> Settings:
    """The preset's settings over the model's defaults; the model's default preset when none is named."""
    defaults = model_defaults(model_key)
    if preset is None and defaults.preset:
        try:
            preset = preset_named(defaults.preset)
        except InvalidRequest as exc:  # the server's settings are wrong, not the request: say so, go on
            log.warning("model '%s': its default preset is not applied: %s", model_key, exc)
    layered = preset.settings if preset is not None else Settings()
    return layered.over(defaults.prediction)


def apply_settings(options: GenerationOptions, settings: Settings, *, tools_active: bool = False) -> GenerationOptions:
    """``options`` with each setting the request did not give taken from ``settings``."""
    keep = options.given
    sampling_values = {name: getattr(settings, name) for name in SAMPLING_SETTINGS
                       if name not in keep and getattr(settings, name) is not None}
    changes: dict[str, Any] = {}
    if sampling_values:
        changes["sampling"] = replace(options.sampling, **sampling_values)
    if settings.max_tokens is not None and "max_tokens" not in keep:
        changes["max_tokens"] = None if settings.max_tokens == NO_LIMIT else settings.max_tokens
    if settings.stop is not None and "stop" not in keep:
        changes["stop"] = settings.stop
    if settings.reasoning_budget is not None and options.reasoning_budget is None:  # a request's own wins
        changes["reasoning_budget"] = settings.reasoning_budget
    # tools bring a grammar of their own: a preset's structured output gives way to them
    if settings.json_schema is not None and "constraint" not in keep and not tools_active:
        changes["constraint"] = ConstraintSpec.json_schema(settings.json_schema)
        changes["constraint_param"] = "preset"
    return replace(options, **changes) if changes else options


def with_system_prompt(messages: list[ChatMessage], settings: Settings) -> list[ChatMessage]:
    """The preset's system prompt first, unless the chat has a system message of its own."""
    if settings.system_prompt is None or any(m.role == "system" for m in messages):
        return messages
    return [ChatMessage("system", settings.system_prompt), *messages]


def chat_with_settings(request: ChatRequest, settings: Settings) -> ChatRequest:
    """The chat with ``settings`` wherever it gave none: its options, and the system prompt."""
    tools_active = request.tools is not None and request.tools.active
    return replace(request, messages=with_system_prompt(request.messages, settings),
                   options=apply_settings(request.options, settings, tools_active=tools_active))
