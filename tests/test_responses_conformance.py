"""Every object of the Responses API against the two references strict clients use (see
tests/responses_spec.py): the openai package's types in strict mode and Open Responses' JSON schema.

First the objects as the renderer builds them, edge cases included (a failed stream, responses
stored by an earlier studiolo or by /api/v1/chat); then the real ones, end to end: created,
retrieved, streamed (every event), and the input items list. The deleted object is typed by
neither (the openai client drops the body of ``responses.delete``; Open Responses has no delete),
so tests/test_responses_api.py checks its exact shape.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import httpx
import pytest

from studiolo.api.responses import routes as responses_routes
from studiolo.api.responses.render import (
    EventStream,
    OutputItems,
    ResponseInfo,
    response_object,
    stored_response_object,
    usage_body,
)
from studiolo.api.responses.schemas import ResponseBody
from studiolo.domain.errors import InvalidRequest
from studiolo.service.generation import UnloadedWhileGenerating
from studiolo.service.types import (
    Alternative,
    Finished,
    ReasoningDelta,
    TextDelta,
    TokenInfo,
    ToolCallDelta,
    Usage,
)
from studiolo.store.responses import StoredResponse
from tests.conftest import SMOLLM
from tests.responses_spec import event_errors, item_list_errors, response_errors

RESPONSES = "/v1/responses"
WEATHER = {"type": "function", "name": "get_weather", "description": "The current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                          "required": ["city"]}}
PERSON = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "maxLength": 20}}}


def _token(text: str) -> TokenInfo:
    alternatives = (Alternative(1, text, text.encode(), -0.1), Alternative(2, "x", b"x", -2.5))
    return TokenInfo(1, text, text.encode(), -0.1, alternatives)


def _rendered(fields: dict, generation: list) -> list[dict]:
    """The response objects and events one generation makes, as the routes send them."""
    body = ResponseBody(model=SMOLLM, input="Hi", **fields)
    info = ResponseInfo("resp_1", SMOLLM, 1700000000, "Be brief.", None, body.settings())
    output, stream = OutputItems(body.logprobs is not None), EventStream()
    started = response_object(info, "in_progress", [])
    events = [{"type": "response.created", "response": started}, {"type": "response.in_progress", "response": started}]
    for event in generation:
        events += output.feed(event)
    finished = response_object(info, output.status, output.items, usage_body(9, 3, 4), completed_at=1700000001)
    events.append({"type": f"response.{output.status}", "response": finished})
    return [finished] + [json.loads(stream.sse(event).split("data: ", 1)[1]) for event in events]


RENDERED_CASES = {
    "text": ({}, [TextDelta(0, "Hello"), TextDelta(0, " there."), Finished(0, "stop")]),
    "logprobs": ({"include": ["message.output_text.logprobs"], "top_logprobs": 2},
                 [TextDelta(0, "Hello", (_token("Hello"),)), Finished(0, "stop")]),
    "cut off": ({"max_output_tokens": 1}, [TextDelta(0, "Hello"), Finished(0, "length", "max_tokens")]),
    "tool call": ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"},
                   "parallel_tool_calls": False},
                  [TextDelta(0, "Let me look."), ToolCallDelta(0, 0, "call_1", "get_weather"),
                   ToolCallDelta(0, 0, arguments='{"city": "Paris"}'), Finished(0, "tool_calls")]),
    "json schema": ({"text": {"format": {"type": "json_schema", "schema": PERSON}}, "presence_penalty": 0.5},
                    [TextDelta(0, '{"name": "Ada"}'), Finished(0, "stop")]),
    "empty": ({"text": {"format": {"type": "json_object"}}}, [Finished(0, "stop")]),
    "reasoning": ({"reasoning": {"effort": "high", "summary": "auto"}},
                  [ReasoningDelta(0, "2 and 2"), ReasoningDelta(0, " make 4."), TextDelta(0, "4."),
                   Finished(0, "stop")]),
    "reasoning then a call": ({"tools": [WEATHER]},
                              [ReasoningDelta(0, "Paris first."), ToolCallDelta(0, 0, "call_1", "get_weather"),
                               ToolCallDelta(0, 0, arguments='{"city": "Paris"}'), Finished(0, "tool_calls")]),
    "reasoning cut off": ({"max_output_tokens": 2}, [ReasoningDelta(0, "Hmm"), Finished(0, "length", "max_tokens")]),
}


@pytest.mark.parametrize("case", RENDERED_CASES)
def test_rendered_responses_and_events_conform(case):
    fields, generation = RENDERED_CASES[case]
    response, *events = _rendered(fields, generation)
    assert response_errors(response) == []
    for event in events:
        assert event_errors(event) == [], event["type"]


def test_the_penalties_and_top_logprobs_are_the_values_used():
    response, *_ = _rendered({"frequency_penalty": -0.5}, [Finished(0, "stop")])
    assert (response["presence_penalty"], response["frequency_penalty"], response["top_logprobs"]) == (0.0, -0.5, 0)
    assert response["usage"]["input_tokens_details"] == {"cached_tokens": 4, "cache_write_tokens": 5}


@pytest.mark.parametrize(("failure", "code"), [
    (RuntimeError("the engine broke"), "server_error"),
    (UnloadedWhileGenerating("the model was unloaded"), "server_error"),  # ours is model_unloaded: not OpenAI's
    (InvalidRequest("a constraint failed", "text.format"), "invalid_prompt"),
], ids=["bug", "unloaded", "request"])
def test_a_failed_stream_conforms(failure, code):
    class Generation:
        usage = Usage(prompt_tokens=5, completion_tokens=1)

        async def events(self):
            yield TextDelta(0, "Hi")
            raise failure

        def cancel(self):
            pass

    body = ResponseBody(model=SMOLLM, input="Hi")
    info = ResponseInfo("resp_1", SMOLLM, 0, None, None, body.settings())
    run = SimpleNamespace(id="resp_1", generation=Generation())

    async def collect():
        return [chunk async for chunk in responses_routes._events(None, run, info, False)]

    events = [json.loads(chunk.split("data: ", 1)[1]) for chunk in asyncio.run(collect())]
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == code
    assert events[-1]["response"]["error"]["message"] == str(failure)
    for event in events:
        assert event_errors(event) == [], event["type"]


LEGACY_SETTINGS = {  # what an earlier studiolo stored with a /v1/responses turn
    "max_output_tokens": None, "parallel_tool_calls": True, "store": True, "temperature": 0.0,
    "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_logprobs": None,
    "top_p": 0.95, "metadata": {},
}


@pytest.mark.parametrize("details", [{}, {"settings": LEGACY_SETTINGS, "created_at": 1700000000},
                                     {"generation": {"temperature": 0.3, "top_p": 0.9, "presence_penalty": 0.0,
                                                     "frequency_penalty": 0.0, "max_output_tokens": 8,
                                                     "top_logprobs": 0}}],
                         ids=["nothing kept", "earlier responses turn", "lm studio chat turn"])
def test_stored_responses_conform_whatever_was_kept(details):
    message = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
               "content": [{"type": "output_text", "text": "Hi", "annotations": [], "logprobs": []}]}
    usage = {"input_tokens": 5, "output_tokens": 1, "total_tokens": 6, "cached_tokens": 0}
    stored = StoredResponse("resp_1", SMOLLM, 1700000001.5, None, [], [message], usage, "completed", None, details)
    body = stored_response_object(stored)
    assert response_errors(body) == []
    if "generation" in details:
        assert (body["temperature"], body["max_output_tokens"]) == (0.3, 8)


# --- end to end ---------------------------------------------------------------------------


def _post(http: httpx.Client, **fields) -> dict:
    body = {"model": SMOLLM, "temperature": 0, "repeat_penalty": 1.0, "max_output_tokens": 16, **fields}
    response = http.post(RESPONSES, json=body)
    assert response.status_code == 200, response.text
    return response.json()


SERVED_CASES = {
    "text": {"input": "Say hello.", "instructions": "Be brief.", "metadata": {"k": "v"}},
    "logprobs": {"input": "Say hello.", "include": ["message.output_text.logprobs"], "top_logprobs": 2},
    "cut off": {"input": "Tell me a long story.", "max_output_tokens": 2},
    "tool call": {"input": "What is the weather in Paris?", "tools": [WEATHER], "tool_choice": "required",
                  "parallel_tool_calls": False, "max_output_tokens": 60},
    "json schema": {"input": "Name a person.", "text": {"format": {"type": "json_schema", "name": "person",
                                                                   "schema": PERSON, "strict": True}},
                    "max_output_tokens": 40},
}


@pytest.mark.parametrize("case", SERVED_CASES)
def test_created_and_retrieved_responses_conform(http, case):
    created = _post(http, **SERVED_CASES[case])
    assert response_errors(created) == []
    retrieved = http.get(f"{RESPONSES}/{created['id']}").json()
    assert response_errors(retrieved) == []
    continued = _post(http, input="And then?", previous_response_id=created["id"], max_output_tokens=4) \
        if case != "tool call" else None
    assert continued is None or response_errors(continued) == []


@pytest.mark.parametrize("case", ["logprobs", "tool call", "cut off"])
def test_every_streamed_event_conforms(http, case):
    body = {"model": SMOLLM, "temperature": 0, "repeat_penalty": 1.0, "max_output_tokens": 16,
            **SERVED_CASES[case], "stream": True}
    events = []
    with http.stream("POST", RESPONSES, json=body) as response:
        assert response.status_code == 200
        events = [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]
    assert events[0]["type"] == "response.created" and events[-1]["type"] in ("response.completed",
                                                                               "response.incomplete")
    for event in events:
        assert event_errors(event) == [], event["type"]


def test_input_items_list_conforms(http):
    asked = _post(http, **SERVED_CASES["tool call"])
    call = asked["output"][-1]
    assert call["type"] == "function_call"
    items = [{"type": "function_call_output", "call_id": call["call_id"], "output": '{"celsius": 18}'},
             {"role": "developer", "content": "Answer in one sentence."},
             {"role": "assistant", "content": "Noted."},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Is it warm?"}]}]
    answer = _post(http, input=items, previous_response_id=asked["id"], tools=[WEATHER], max_output_tokens=8)
    listed = http.get(f"{RESPONSES}/{answer['id']}/input_items", params={"order": "asc"}).json()
    assert [item["type"] for item in listed["data"]] == ["function_call_output", "message", "message", "message"]
    assert item_list_errors(listed) == []
    replayed = [{"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "{}"}]
    listed = http.get(f"{RESPONSES}/{_post(http, input=replayed, max_output_tokens=2)['id']}/input_items").json()
    assert item_list_errors(listed) == []
