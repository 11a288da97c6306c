"""LM Studio's KV config stack, read into the same domain options the REST routes build.

A prediction carries ``predictionConfigStack: {layers: [{layerName, config: {fields: [{key, value}]}}]}``;
a key set by a later layer wins. The keys read (all under ``llm.prediction.``):

    temperature                    number, 0 to 2                      sampling.temperature
    maxPredictedTokens             {checked, value >= 1}               max_tokens (unchecked: no limit)
    stopStrings                    [string]                            stop
    topKSampling                   integer >= -1 (-1, 0: off)          sampling.top_k
    topPSampling, minPSampling     {checked, value 0..1}               top_p, min_p (unchecked: off)
    repeatPenalty                  {checked, value > 0}                repeat_penalty (unchecked: 1, off)
    llama.presencePenalty,
    llama.frequencyPenalty         {checked, value -2..2}              presence/frequency penalty
    seed                           {checked, value} (-1: random)       sampling.seed
    llama.logitBias                [[token, bias or "-inf"]]           sampling.logit_bias ("-inf": -100, a ban)
    structured                     {type: none | json | gbnf, ...}     the output's constraint
    tools, toolChoice              handlers/llm_tools.py               the tools the model may call
    reasoning.enableThinking       boolean                             the reasoning option "on" / "off"
    reasoning.budgetTokens         {checked, value >= 0}               reasoning_budget
    reasoning.parsing              {enabled, ...}                      enabled false: reasoning stays text
    promptTemplate                 see ``PromptTemplate``              a template in place of the model's
    speculativeDecoding.draftModel string ("": the default)            draft_model

Every other key is ignored: LM Studio's stack carries many that only its own app reads (the UI's
system prompt, context overflow policy, CPU threads, ...). A bad value of a key read is an
InvalidRequest whose ``param`` is the key, so the SDK's error names it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from studiolo.api.lmstudio_sdk.handlers.llm_tools import TOOL_CHOICE_KEY, TOOLS_KEY, offered, tool_choice, tool_specs
from studiolo.domain.chat import Tools, ToolSpec
from studiolo.domain.errors import InvalidRequest
from studiolo.domain.sampling import SAMPLING_RANGES, SamplingParams
from studiolo.service.constraints import Constraint, spec_of
from studiolo.service.presets import given
from studiolo.service.tools import check_no_other_constraint
from studiolo.service.types import GenerationOptions

PREFIX = "llm.prediction."
STACK_PARAM = "predictionConfigStack"
NO_LIMIT = -1  # what ``given`` records for an unchecked maxPredictedTokens: no limit, and a preset keeps off

# the Python SDK's complete(): a layer whose Jinja template joins the messages' contents, so that the
# prompt is the text as given (json_api.py _get_completion_config_layer), compared without spaces
_RAW_TEMPLATES = {re.sub(r"\s+", "", text) for text in (
    "{% for message in messages %}{{ message['content'] }}{% endfor %}",
    '{% for message in messages %}{{ message["content"] }}{% endfor %}',
    "{% for message in messages %}{{ message.content }}{% endfor %}",
)}
MAX_BIASED_TOKENS = 1024  # as REST's logit_bias
BANNED = -100.0  # LM Studio's "-inf": REST's strongest bias, which no token overcomes
MANUAL_PARTS = ("beforeSystem", "afterSystem", "beforeUser", "afterUser", "beforeAssistant", "afterAssistant")


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt template the client sent in place of the model's own: ``raw`` joins the messages'
    contents (the Python SDK's ``complete()``), ``manual`` wraps each message in LM Studio's
    before/after strings. Client-sent Jinja is not run: a template is a program."""

    kind: str  # "raw" | "manual"
    manual: dict[str, str] = field(default_factory=dict)
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class PredictionConfig:
    options: GenerationOptions
    tools: Tools | None = None
    reasoning_option: str | None = None  # "on" | "off" (None: the model's default)
    reasoning_output: str = "separate"  # "raw" when reasoning.parsing is disabled
    template: PromptTemplate | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # the keys read, as sent: the success's predictionConfig


@dataclass
class _Reading:
    """What the keys set, as they are read."""

    sampling: dict[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None  # NO_LIMIT: unchecked
    stop: list[str] | None = None
    constraint: Constraint | None = None
    specs: list[ToolSpec] | None = None
    choice: str | None = None
    reasoning_option: str | None = None
    reasoning_budget: int | None = None
    reasoning_output: str = "separate"
    template: PromptTemplate | None = None
    draft_model: str | None = None


def merged_fields(stack: Any, param: str = STACK_PARAM) -> dict[str, Any]:
    """Every key of the stack with the value its last layer gives it."""
    if stack is None:
        return {}
    if not isinstance(stack, dict) or not isinstance(stack.get("layers"), list):
        raise InvalidRequest(f"'{param}' must be {{layers: [{{layerName, config: {{fields}}}}]}}", param)
    merged: dict[str, Any] = {}
    for index, layer in enumerate(stack["layers"]):
        where = f"{param}.layers[{index}]"
        config = layer.get("config") if isinstance(layer, dict) else None
        fields = config.get("fields") if isinstance(config, dict) else None
        if not isinstance(fields, list):
            raise InvalidRequest(f"'{where}' must be {{layerName, config: {{fields: [{{key, value}}]}}}}", where)
        for number, item in enumerate(fields):
            if not isinstance(item, dict) or not isinstance(item.get("key"), str):
                raise InvalidRequest(f"'{where}.config.fields[{number}]' must be {{key, value}}",
                                     f"{where}.config.fields[{number}]")
            merged[item["key"]] = item.get("value")
    return merged


def prediction_config(stack: Any, preset: str | None = None, param: str = STACK_PARAM) -> PredictionConfig:
    """The stack's prediction settings as domain options; ``preset`` (the SDK's fuzzyPresetIdentifier)
    fills what the stack leaves unset, as a REST request's ``preset`` does."""
    fields = merged_fields(stack, param)
    reading = _Reading()
    read = {}
    for key, value in fields.items():
        reader = _READERS.get(key.removeprefix(PREFIX)) if key.startswith(PREFIX) else None
        if reader is not None:
            reader(reading, value, key)
            read[key] = value
    tools = offered(reading.specs or [], reading.choice) if reading.specs is not None or reading.choice else None
    options = _options(reading, preset)
    check_no_other_constraint(tools, options.constraint_param)
    if reading.template is not None and tools is not None and tools.active:
        raise InvalidRequest("tools need the model's own prompt template: send no 'llm.prediction.promptTemplate' "
                             "with tools", PREFIX + "promptTemplate")
    return PredictionConfig(options, tools, reading.reasoning_option, reading.reasoning_output, reading.template, read)


def _options(reading: _Reading, preset: str | None) -> GenerationOptions:
    sampling = reading.sampling
    max_tokens = reading.max_tokens
    return GenerationOptions(
        sampling=SamplingParams.given(**sampling),
        max_tokens=None if max_tokens in (None, NO_LIMIT) else max_tokens,
        stop=tuple(reading.stop or ()) + (reading.template.stop if reading.template else ()),
        constraint=reading.constraint,
        constraint_param=PREFIX + "structured" if reading.constraint is not None else None,
        report_progress=True,  # promptProcessingProgress packets
        preset=preset,
        draft_model=reading.draft_model,
        reasoning_budget=reading.reasoning_budget,
        given=given(**{name: sampling.get(name) for name in ("temperature", "top_p", "top_k", "min_p",
                                                             "repeat_penalty")},
                    max_tokens=max_tokens, stop=reading.stop, constraint=reading.constraint),
    )


# --- values --------------------------------------------------------------------------------------


def _number(value: Any, key: str, *, integer: bool = False, ge: float | None = None, gt: float | None = None,
            le: float | None = None) -> Any:
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            (integer and not float(value).is_integer()):  # the Python SDK sends 1.0 for 1
        raise InvalidRequest(f"'{key}' must be {kind}, got {value!r}", key)
    if (ge is not None and value < ge) or (gt is not None and value <= gt) or (le is not None and value > le):
        bounds = [f">= {ge:g}" if ge is not None else "", f"> {gt:g}" if gt is not None else "",
                  f"<= {le:g}" if le is not None else ""]
        raise InvalidRequest(f"'{key}' must be {' and '.join(b for b in bounds if b)}, got {value!r}", key)
    return value


def _ranged(name: str, value: Any, key: str, *, integer: bool = False) -> Any:
    """A sampling value within the domain's one table of ranges."""
    bounds = SAMPLING_RANGES[name]
    value = _number(value, key, integer=integer, ge=bounds.get("ge"), gt=bounds.get("gt"), le=bounds.get("le"))
    return int(value) if integer else float(value)


def _checkbox(value: Any, key: str) -> tuple[bool, Any]:
    """LM Studio's ``{checked, value}``: whether it is on, and its value. The Python SDK sends a
    setting turned off as ``{checked: true, value: false}``."""
    if not isinstance(value, dict) or not isinstance(value.get("checked", False), bool):
        raise InvalidRequest(f"'{key}' must be {{checked: boolean, value}}, got {value!r}", key)
    inner = value.get("value")
    checked = value.get("checked", False) and inner is not False
    if checked and inner is None:
        raise InvalidRequest(f"'{key}' is checked but has no 'value'", key)
    return checked, inner


def _strings(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidRequest(f"'{key}' must be a list of strings, got {value!r}", key)
    return list(value)


# --- the keys --------------------------------------------------------------------------------------


def _temperature(reading: _Reading, value: Any, key: str) -> None:
    reading.sampling["temperature"] = _ranged("temperature", value, key)


def _max_tokens(reading: _Reading, value: Any, key: str) -> None:
    checked, inner = _checkbox(value, key)
    reading.max_tokens = int(_number(inner, key, integer=True, ge=1)) if checked else NO_LIMIT


def _stop_strings(reading: _Reading, value: Any, key: str) -> None:
    reading.stop = [stop for stop in _strings(value, key) if stop]


def _top_k(reading: _Reading, value: Any, key: str) -> None:
    reading.sampling["top_k"] = _ranged("top_k", value, key, integer=True)


def _sampling_checkbox(name: str, off: float) -> Any:
    """A ``{checked, value}`` sampling setting: unchecked turns it off (``off``: the neutral value)."""
    def read(reading: _Reading, value: Any, key: str) -> None:
        checked, inner = _checkbox(value, key)
        reading.sampling[name] = _ranged(name, inner, key) if checked else off
    return read


def _seed(reading: _Reading, value: Any, key: str) -> None:
    checked, inner = _checkbox(value, key)
    seed = int(_number(inner, key, integer=True, ge=-1)) if checked else -1
    reading.sampling["seed"] = None if seed == -1 else seed


def _logit_bias(reading: _Reading, value: Any, key: str) -> None:
    if not isinstance(value, list) or len(value) > MAX_BIASED_TOKENS:
        raise InvalidRequest(f"'{key}' must be a list of at most {MAX_BIASED_TOKENS} [token, bias] pairs", key)
    bias = {}
    for pair in value:
        if not isinstance(pair, list) or len(pair) != 2:
            raise InvalidRequest(f"'{key}' must be a list of [token, bias] pairs, got {pair!r}", key)
        token = int(_number(pair[0], key, integer=True, ge=0))
        bias[token] = BANNED if pair[1] == "-inf" else float(_number(pair[1], key, ge=-100, le=100))
    reading.sampling["logit_bias"] = bias


def _structured(reading: _Reading, value: Any, key: str) -> None:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "none":
        reading.constraint = None
    elif kind == "json":
        schema = value.get("jsonSchema")
        if not isinstance(schema, (dict, bool)):
            raise InvalidRequest(f"'{key}' of type json needs 'jsonSchema', a JSON schema", key)
        reading.constraint = spec_of("json", schema, None, key)
    elif kind == "gbnf":
        grammar = value.get("gbnfGrammar")
        if not isinstance(grammar, str) or not grammar.strip():
            raise InvalidRequest(f"'{key}' of type gbnf needs 'gbnfGrammar', a grammar", key)
        reading.constraint = spec_of("grammar", grammar, None, key)
    else:
        raise InvalidRequest(f"'{key}' must be {{type: \"none\" | \"json\" | \"gbnf\", jsonSchema?, gbnfGrammar?}}",
                             key)


def _tools(reading: _Reading, value: Any, key: str) -> None:
    reading.specs = tool_specs(value, key)


def _tool_choice(reading: _Reading, value: Any, key: str) -> None:
    reading.choice = tool_choice(value, key)


def _enable_thinking(reading: _Reading, value: Any, key: str) -> None:
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{key}' must be a boolean, got {value!r}", key)
    reading.reasoning_option = "on" if value else "off"


def _reasoning_budget(reading: _Reading, value: Any, key: str) -> None:
    checked, inner = _checkbox(value, key)
    reading.reasoning_budget = int(_number(inner, key, integer=True, ge=0)) if checked else None


def _reasoning_parsing(reading: _Reading, value: Any, key: str) -> None:
    if not isinstance(value, dict) or not isinstance(value.get("enabled", True), bool):
        raise InvalidRequest(f"'{key}' must be {{enabled: boolean, startString, endString}}", key)
    # studiolo finds the reasoning by the model's own format; the strings are LM Studio's UI's
    reading.reasoning_output = "separate" if value.get("enabled", True) else "raw"


def _prompt_template(reading: _Reading, value: Any, key: str) -> None:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("jinja", "manual"):
        raise InvalidRequest(f"'{key}' must be {{type: \"jinja\" | \"manual\", ..., stopStrings}}", key)
    stop = tuple(s for s in _strings(value.get("stopStrings", []), f"{key}.stopStrings") if s)
    if kind == "manual":
        manual = value.get("manualPromptTemplate")
        if not isinstance(manual, dict) or not all(isinstance(manual.get(part), str) for part in MANUAL_PARTS):
            raise InvalidRequest(f"'{key}.manualPromptTemplate' needs the strings {', '.join(MANUAL_PARTS)}",
                                 f"{key}.manualPromptTemplate")
        reading.template = PromptTemplate("manual", {part: manual[part] for part in MANUAL_PARTS}, stop)
        return
    jinja = value.get("jinjaPromptTemplate")
    source = jinja.get("template") if isinstance(jinja, dict) else None
    if not isinstance(source, str) or re.sub(r"\s+", "", source) not in _RAW_TEMPLATES:
        raise InvalidRequest(f"'{key}': studiolo renders chats with the model's own template and runs no Jinja "
                             "template a client sends (send a manual template, or none)", key)
    reading.template = PromptTemplate("raw", stop=stop)


def _draft_model(reading: _Reading, value: Any, key: str) -> None:
    if not isinstance(value, str):
        raise InvalidRequest(f"'{key}' must be a model key (a string), got {value!r}", key)
    reading.draft_model = value or None


_READERS = {
    "temperature": _temperature,
    "maxPredictedTokens": _max_tokens,
    "stopStrings": _stop_strings,
    "topKSampling": _top_k,
    "topPSampling": _sampling_checkbox("top_p", 1.0),
    "minPSampling": _sampling_checkbox("min_p", 0.0),
    "repeatPenalty": _sampling_checkbox("repeat_penalty", 1.0),
    "llama.presencePenalty": _sampling_checkbox("presence_penalty", 0.0),
    "llama.frequencyPenalty": _sampling_checkbox("frequency_penalty", 0.0),
    "seed": _seed,
    "llama.logitBias": _logit_bias,
    "structured": _structured,
    TOOLS_KEY.removeprefix(PREFIX): _tools,
    TOOL_CHOICE_KEY.removeprefix(PREFIX): _tool_choice,
    "reasoning.enableThinking": _enable_thinking,
    "reasoning.budgetTokens": _reasoning_budget,
    "reasoning.parsing": _reasoning_parsing,
    "promptTemplate": _prompt_template,
    "speculativeDecoding.draftModel": _draft_model,
}
