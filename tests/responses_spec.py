"""Checks of Responses API objects as strict clients and compliance suites make them.

Two references, each read from a pinned package (pyproject.toml's ``test`` extras), nothing copied
into this repository:

- the ``openai`` package's pydantic types, validated in strict mode (no coercion: ``null`` is not
  an integer, a missing required field is missing);
- the Open Responses specification (openresponses.org), as the OpenAPI document the
  ``openresponses-py`` package ships (``openresponses/openapi/<version>.json``), its component
  schemas checked with ``jsonschema``. The package's own code is not imported.

Each check returns the list of complaints, empty when the object conforms, so a test can show
them all at once.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
from openai.types import responses as oa

OPEN_RESPONSES_VERSION = "2026-04-24"
_SPEC_FILE = f"openresponses/openapi/{OPEN_RESPONSES_VERSION}.json"

# each streamed event type: the openai package's class, and Open Responses' schema
EVENTS: dict[str, tuple[type[pydantic.BaseModel], str]] = {
    "response.created": (oa.ResponseCreatedEvent, "ResponseCreatedStreamingEvent"),
    "response.in_progress": (oa.ResponseInProgressEvent, "ResponseInProgressStreamingEvent"),
    "response.completed": (oa.ResponseCompletedEvent, "ResponseCompletedStreamingEvent"),
    "response.incomplete": (oa.ResponseIncompleteEvent, "ResponseIncompleteStreamingEvent"),
    "response.failed": (oa.ResponseFailedEvent, "ResponseFailedStreamingEvent"),
    "response.output_item.added": (oa.ResponseOutputItemAddedEvent, "ResponseOutputItemAddedStreamingEvent"),
    "response.output_item.done": (oa.ResponseOutputItemDoneEvent, "ResponseOutputItemDoneStreamingEvent"),
    "response.content_part.added": (oa.ResponseContentPartAddedEvent, "ResponseContentPartAddedStreamingEvent"),
    "response.content_part.done": (oa.ResponseContentPartDoneEvent, "ResponseContentPartDoneStreamingEvent"),
    "response.output_text.delta": (oa.ResponseTextDeltaEvent, "ResponseOutputTextDeltaStreamingEvent"),
    "response.output_text.done": (oa.ResponseTextDoneEvent, "ResponseOutputTextDoneStreamingEvent"),
    "response.function_call_arguments.delta": (
        oa.ResponseFunctionCallArgumentsDeltaEvent, "ResponseFunctionCallArgumentsDeltaStreamingEvent"),
    "response.function_call_arguments.done": (
        oa.ResponseFunctionCallArgumentsDoneEvent, "ResponseFunctionCallArgumentsDoneStreamingEvent"),
    "response.reasoning_text.delta": (oa.ResponseReasoningTextDeltaEvent, "ResponseReasoningDeltaStreamingEvent"),
    "response.reasoning_text.done": (oa.ResponseReasoningTextDoneEvent, "ResponseReasoningDoneStreamingEvent"),
}
# One known conflict of names: the reasoning text events are ``response.reasoning_text.*`` in the
# openai package (and OpenAI's own gpt-oss server), ``response.reasoning.*`` in Open Responses' schema.
# studiolo sends OpenAI's names; the spec's check is given its own.
_SPEC_EVENT_TYPES = {"response.reasoning_text.delta": "response.reasoning.delta",
                     "response.reasoning_text.done": "response.reasoning.done"}


@functools.cache
def open_responses_spec() -> dict[str, Any]:
    path = importlib.metadata.distribution("openresponses-py").locate_file(_SPEC_FILE)
    spec = json.loads(Path(str(path)).read_text())
    assert spec["info"] == {"title": "Open Responses", "version": OPEN_RESPONSES_VERSION}
    return spec


@functools.cache
def _spec_validator(name: str) -> jsonschema.Draft202012Validator:
    components = open_responses_spec()["components"]
    assert name in components["schemas"], name
    # the schema's $ref resolves against this document, which carries the spec's components
    return jsonschema.Draft202012Validator({"components": components, "$ref": f"#/components/schemas/{name}"})


def spec_errors(name: str, body: Any) -> list[str]:
    """What Open Responses' schema ``name`` finds wrong in ``body``."""
    return [f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message[:300]}"
            for error in _spec_validator(name).iter_errors(body)]


def openai_errors(kind: Any, body: Any) -> list[str]:
    """What the openai package's type ``kind`` (a model, or a union such as ResponseItem) finds wrong
    in ``body``, validated strictly."""
    try:
        if isinstance(kind, type) and issubclass(kind, pydantic.BaseModel):
            kind.model_validate(body, strict=True)
        else:
            pydantic.TypeAdapter(kind).validate_python(body, strict=True)
    except pydantic.ValidationError as exc:
        return [f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()]
    return []


def _spec_view(response: dict[str, Any]) -> dict[str, Any]:
    """One known conflict set aside: a ``json_schema`` text format echoes its schema, as OpenAI does
    and the openai package's type requires (``schema: Dict``), where Open Responses' response schema
    says ``"schema": {"type": "null"}``; only that field is given null for the spec's check."""
    text = response.get("text") or {}
    if text.get("format", {}).get("type") != "json_schema":
        return response
    return {**response, "text": {**text, "format": {**text["format"], "schema": None}}}


def response_errors(body: dict[str, Any]) -> list[str]:
    """A response object (POST or GET) against both references."""
    return ([f"openai: {error}" for error in openai_errors(oa.Response, body)]
            + [f"open responses: {error}" for error in spec_errors("ResponseResource", _spec_view(body))])


def event_errors(event: dict[str, Any]) -> list[str]:
    """A streamed event (the response inside a response.* event included) against both references."""
    kind, schema = EVENTS[event["type"]]
    spec_event = {**event, "response": _spec_view(event["response"])} if "response" in event else event
    spec_event = {**spec_event, "type": _SPEC_EVENT_TYPES.get(event["type"], event["type"])}
    return ([f"openai: {error}" for error in openai_errors(kind, event)]
            + [f"open responses: {error}" for error in spec_errors(schema, spec_event)])


def item_list_errors(body: dict[str, Any]) -> list[str]:
    """A list of input items (GET /v1/responses/{id}/input_items). Open Responses has no list
    endpoint; each item is checked against its item schema (ItemField) as well."""
    errors = [f"openai: {error}" for error in openai_errors(oa.ResponseItemList, body)]
    for index, item in enumerate(body.get("data", ())):
        errors += [f"open responses: data.{index}: {error}" for error in spec_errors("ItemField", item)]
    return errors


def compacted_errors(body: dict[str, Any]) -> list[str]:
    """A compacted response (POST /v1/responses/compact, or GET of its id) against both references.

    The openai type's ``output: List[ResponseOutputItem]`` cannot hold the user messages its own
    docstring says the output starts with (a ResponseOutputMessage is the assistant's), so each item
    is checked as the package types it elsewhere: a user message as ResponseInputMessageItem (an
    input item listed), the compaction item as ResponseCompactionItem."""
    errors = openai_errors(oa.CompactedResponse, {**body, "output": []})
    for index, item in enumerate(body.get("output", ())):
        kind = oa.ResponseCompactionItem if item.get("type") == "compaction" else oa.ResponseInputMessageItem
        errors += [f"output.{index}.{error}" for error in openai_errors(kind, item)]
    return [f"openai: {error}" for error in errors] + [
        f"open responses: {error}" for error in spec_errors("CompactResource", body)]
