"""Presets and per-model defaults as values: named sets of settings a request may take by name.

Every field is optional: None means "the preset does not set it", so the next layer down decides
(request > preset > model defaults > server defaults; service/presets.py merges them).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

NO_LIMIT = -1  # max_tokens of a preset that turns the limit off (LM Studio's unchecked maxPredictedTokens)


@dataclass(frozen=True)
class Settings:
    """Prediction settings of a preset or of a model's defaults (each None: not set here)."""

    system_prompt: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    max_tokens: int | None = None  # NO_LIMIT: no limit
    stop: tuple[str, ...] | None = None
    json_schema: dict[str, Any] | None = None  # structured output: the schema every answer must match
    context_length: int | None = None  # the context a model gets if a request with this preset loads it
    reasoning_budget: int | None = None  # reasoning tokens before studiolo closes the reasoning itself

    def over(self, lower: Settings) -> Settings:
        """These settings, with ``lower``'s wherever these set nothing."""
        return Settings(**{f.name: _first(getattr(self, f.name), getattr(lower, f.name)) for f in fields(self)})

    def given(self) -> dict[str, Any]:
        """The settings this sets, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class Preset:
    name: str  # what requests' ``preset`` field and `studiolo preset show` call it
    settings: Settings
    identifier: str | None = None  # LM Studio's, e.g. "@local:my-preset": requests may name it too
    ignored: tuple[str, ...] = ()  # keys of the file studiolo does not apply (LM Studio has many)


@dataclass(frozen=True)
class ModelDefaults:
    """A model's own settings file: how it loads, and the prediction defaults of its requests."""

    context_length: int | None = None
    parallel: int | None = None
    ttl: float | None = None  # idle seconds before unloading
    draft_model: str | None = None  # loaded with it: what its requests draft with unless they name another
    preset: str | None = None  # applied when a request names none
    prediction: Settings = field(default_factory=Settings)
    ignored: tuple[str, ...] = ()


def _first(value: Any, fallback: Any) -> Any:
    return value if value is not None else fallback
