"""OpenAI's Responses API (/v1/responses), end to end with SmolLM2 at temperature 0: the response
object, its streamed events, stored conversations (continuation, branching, store: false),
retrieval, input items and deletion, structured output, logprobs and a function-call round trip.
What the model saw is read from the server's prompt log, not inferred from its answers.
"""

from __future__ import annotations

import json

import httpx
import pytest

from studiolo.api.responses.render import OutputItems
from studiolo.service.types import Finished, TextDelta, ToolCallDelta
from tests.batching import assert_same_or_parted_at_a_near_tie
from tests.conftest import NO_PENALTY, SMOLLM
from tests.schemas import validator_for
from tests.test_errors import error_of

RESPONSES = "/v1/responses"
GREEDY = dict(temperature=0, extra_body=NO_PENALTY)  # the openai client's arguments
WEATHER = {"type": "function", "name": "get_weather", "description": "The current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                          "required": ["city"]}}
PERSON = {"type": "object", "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 20},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120}}}


def create(client, prompt, **fields):
    return client.responses.create(model=SMOLLM, input=prompt, max_output_tokens=fields.pop("max_output_tokens", 16),
                                   **GREEDY, **fields)


def stream_events(http: httpx.Client, body: dict) -> list[dict]:
    """The data of every SSE event, checking each ``event:`` line names its data's type."""
    events, kind = [], None
    body = {"model": SMOLLM, "temperature": 0, "repeat_penalty": 1.0, "stream": True, **body}
    with http.stream("POST", RESPONSES, json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            assert line != "data: [DONE]"  # Responses streams end with their last event
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
                assert events[-1]["type"] == kind
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    return events


def test_response_object_has_openai_shape(client):
    response = create(client, "What is 2+2?", max_output_tokens=40)
    assert response.id.startswith("resp_") and response.object == "response" and response.model == SMOLLM
    assert response.status == "completed" and response.error is None and response.incomplete_details is None
    assert response.output_text and [item.type for item in response.output] == ["message"]
    usage = response.usage
    assert usage.input_tokens > 5 and 0 < usage.output_tokens < 40
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0 and usage.input_tokens_details.cached_tokens >= 0


def test_stored_response_is_the_one_returned(http):
    body = {"model": SMOLLM, "input": "Say hello.", "max_output_tokens": 8, "temperature": 0,
            "metadata": {"k": "v"}}
    created = http.post(RESPONSES, json=body).json()
    stored = http.get(f"{RESPONSES}/{created['id']}").json()
    for field in ("id", "object", "model", "status", "output", "usage", "instructions", "previous_response_id",
                  "incomplete_details", "error"):
        assert stored[field] == created[field], field
    assert created["metadata"] == {"k": "v"} and created["temperature"] == 0 and created["store"] is True
    assert created["text"] == {"format": {"type": "text"}}
    assert created["tools"] == [] and created["tool_choice"] == "auto"
    assert created["completed_at"] >= created["created_at"] and stored["completed_at"] >= created["created_at"]
    for field in ("metadata", "temperature", "store", "text", "tools", "tool_choice", "created_at", "max_output_tokens"):
        assert stored[field] == created[field], field  # the request's settings are stored with it


def test_max_output_tokens_makes_an_incomplete_response(client):
    response = create(client, "Tell me a long story about a dragon.", max_output_tokens=3)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3 and response.output[0].status == "incomplete"


def test_sdk_stream_gives_the_non_streamed_text(client):
    # two greedy runs may part at a near-tie (their prompts' last cells come from different slots
    # or cache entries, so the batch shapes differ): compared token by token, as tests/batching.py says
    fields = dict(max_output_tokens=48, include=["message.output_text.logprobs"], top_logprobs=2)
    plain = create(client, "Name three colors.", **fields)
    with client.responses.stream(model=SMOLLM, input="Name three colors.", **GREEDY, **fields) as stream:
        events = list(stream)
    final = events[-1].response  # response.completed, or response.incomplete if it parted into a long answer
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert "".join(deltas) == final.output_text and final.id != plain.id
    assert_same_or_parted_at_a_near_tie("responses stream", _steps(plain), _steps(final))
    if final.output_text == plain.output_text:
        assert final.status == plain.status and final.usage.output_tokens == plain.usage.output_tokens
    assert client.responses.retrieve(final.id).output_text == final.output_text


def _steps(response) -> list:
    return [(entry.token, {alt.token: alt.logprob for alt in entry.top_logprobs})
            for entry in response.output[0].content[0].logprobs]


def test_streamed_text_answer_events_in_openai_order(http):
    events = stream_events(http, {"input": "Say hello.", "max_output_tokens": 6})
    kinds = [event["type"] for event in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas >= 1 and kinds == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.incomplete",
    ]
    final = events[-1]["response"]
    assert events[0]["response"]["id"] == final["id"] and events[0]["response"]["status"] == "in_progress"
    item = final["output"][0]
    assert {event["item_id"] for event in events[3:-2]} == {item["id"]} == {events[2]["item"]["id"]}
    text = "".join(event["delta"] for event in events if event["type"] == "response.output_text.delta")
    assert text == events[-4]["text"] == item["content"][0]["text"]


def test_streamed_tool_call_events_in_openai_order(http):
    body = {"input": "What is the weather in Paris?", "tools": [WEATHER], "tool_choice": "required",
            "parallel_tool_calls": False, "max_output_tokens": 60}
    events = stream_events(http, body)
    kinds = [event["type"] for event in events]
    deltas = kinds.count("response.function_call_arguments.delta")
    assert deltas >= 1 and kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        *["response.function_call_arguments.delta"] * deltas,
        "response.function_call_arguments.done", "response.output_item.done", "response.completed",
    ]
    added, call = events[2]["item"], events[-1]["response"]["output"][0]
    assert added["arguments"] == "" and added["status"] == "in_progress"
    assert call["type"] == "function_call" and call["name"] == "get_weather" and call["id"] == added["id"]
    arguments = "".join(event["delta"] for event in events if event["type"].endswith("arguments.delta"))
    assert arguments == call["arguments"] == events[-3]["arguments"] and json.loads(arguments)["city"]


def test_continuation_carries_the_conversation(client, prompt_log):
    first = create(client, "My name is Ada. Remember it.")
    seen = len(prompt_log.prompts)
    second = create(client, "What is my name?", previous_response_id=first.id, instructions="Answer briefly.")
    prompt_log.wait_for(seen + 1)
    prompt = prompt_log.prompts[seen]
    for text in ("Answer briefly.", "My name is Ada. Remember it.", first.output_text, "What is my name?"):
        assert text in prompt
    assert prompt.index("Ada. Remember") < prompt.index(first.output_text) < prompt.index("What is my name?")
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens - 5
    stored = client.responses.retrieve(second.id)
    assert stored.previous_response_id == first.id and stored.instructions == "Answer briefly."
    assert stored.output_text == second.output_text and stored.usage.input_tokens == second.usage.input_tokens
    items = client.responses.input_items.list(second.id).data
    assert [(item.role, item.content[0].text) for item in items] == [("user", "What is my name?")]


def test_branches_of_one_response_are_separate(client):
    root = create(client, "I live in Paris.", max_output_tokens=8)
    left = create(client, "I like tea.", previous_response_id=root.id, max_output_tokens=8)
    right = create(client, "I like coffee.", previous_response_id=root.id, max_output_tokens=8)
    assert len({root.id, left.id, right.id}) == 3
    assert left.previous_response_id == right.previous_response_id == root.id
    assert client.responses.input_items.list(right.id).data[0].content[0].text == "I like coffee."


def test_unstored_response_has_an_id_but_cannot_be_found(client, http):
    response = create(client, "Hello.", store=False, max_output_tokens=4)
    assert response.id.startswith("resp_") and response.store is False
    error = error_of(http.get(f"{RESPONSES}/{response.id}"), 404)
    assert error["code"] == "response_not_found" and error["param"] == "response_id"
    body = {"model": SMOLLM, "input": "Again.", "previous_response_id": response.id}
    assert error_of(http.post(RESPONSES, json=body), 400)["code"] == "previous_response_not_found"


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_or_malformed_previous_response_id_is_a_400(http, stream):
    body = {"model": SMOLLM, "input": "Hi", "stream": stream, "previous_response_id": "resp_" + "0" * 32}
    error = error_of(http.post(RESPONSES, json=body), 400)
    assert error["code"] == "previous_response_not_found" and error["param"] == "previous_response_id"
    error = error_of(http.post(RESPONSES, json={**body, "previous_response_id": "chatcmpl-1"}), 400)
    assert error["param"] == "previous_response_id"


def test_get_and_delete(client, http):
    response = create(client, "Hello.", max_output_tokens=4)
    assert http.delete(f"{RESPONSES}/{response.id}").json() == {
        "id": response.id, "object": "response.deleted", "deleted": True}
    for method in ("GET", "DELETE"):
        error = error_of(http.request(method, f"{RESPONSES}/{response.id}"), 404)
        assert error["code"] == "response_not_found" and response.id in error["message"]
    assert error_of(http.get(f"{RESPONSES}/{response.id}/input_items"), 404)["code"] == "response_not_found"
    assert error_of(http.get(f"{RESPONSES}/nonsense"), 400)["param"] == "response_id"


def test_input_items_list_in_order_with_stable_ids(client, http):
    items = [{"role": "developer", "content": "Be brief."},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi there."}]}]
    response = create(client, items, max_output_tokens=4)
    newest_first = http.get(f"{RESPONSES}/{response.id}/input_items").json()
    assert newest_first == http.get(f"{RESPONSES}/{response.id}/input_items").json()  # ids are stable
    assert [item["role"] for item in newest_first["data"]] == ["user", "developer"]
    assert newest_first["has_more"] is False and newest_first["object"] == "list"
    oldest = client.responses.input_items.list(response.id, order="asc", limit=1)
    assert oldest.has_more and oldest.data[0].content[0].text == "Be brief."
    assert oldest.first_id == oldest.last_id == newest_first["last_id"]
    after = client.responses.input_items.list(response.id, order="asc", after=oldest.last_id)
    assert [item.id for item in after.data] == [newest_first["first_id"]] and not after.has_more


def test_json_schema_text_format(client):
    text_format = {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
    response = create(client, "Describe a person.", text={"format": text_format}, max_output_tokens=60)
    assert response.status == "completed" and response.text.format.type == "json_schema"
    validator_for(PERSON).validate(json.loads(response.output_text))


def test_logprobs_when_included(client, http):
    response = create(client, "Say hello.", include=["message.output_text.logprobs"], top_logprobs=3,
                      max_output_tokens=10)
    logprobs = response.output[0].content[0].logprobs
    assert 0 < len(logprobs) <= response.usage.output_tokens
    assert all(len(entry.top_logprobs) == 3 and entry.logprob <= 0 for entry in logprobs)
    assert "".join(entry.token for entry in logprobs) == response.output_text
    body = {"input": "Say hello.", "include": ["message.output_text.logprobs"], "top_logprobs": 3,
            "max_output_tokens": 10}
    events = stream_events(http, body)
    deltas = [event for event in events if event["type"] == "response.output_text.delta"]
    streamed = [entry for event in deltas for entry in event["logprobs"]]
    assert [entry["token"] for entry in streamed] == [entry.token for entry in logprobs]


def test_function_call_round_trip(client):
    asked = create(client, "What is the weather in Paris?", tools=[WEATHER], tool_choice="required",
                   parallel_tool_calls=False, max_output_tokens=60)
    call = asked.output[0]
    assert [item.type for item in asked.output] == ["function_call"] and asked.status == "completed"
    assert call.name == "get_weather" and json.loads(call.arguments)["city"]
    result = {"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 18, "sky": "sunny"}'}
    answer = create(client, [result], previous_response_id=asked.id, tools=[WEATHER], max_output_tokens=40)
    assert [item.type for item in answer.output] == ["message"] and answer.output_text
    assert answer.usage.input_tokens > asked.usage.input_tokens


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]},
         "input[0].content[0].image_url"),  # not a base64 data: URL
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type"),  # reasoning items are taken
        ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "function_call", "call_id": "a", "name": "f", "arguments": "[]"}]}, "input[0].arguments"),
        ({"tools": [{**WEATHER, "parameters": {"type": "array"}}]}, "tools[0].parameters"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].name"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"tools": [WEATHER], "text": {"format": {"type": "json_object"}}}, "text.format"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"input": [{"type": "function_call_output", "call_id": "call_nobody_made", "output": "x"}]}, "input"),
    ],
)
def test_bad_requests_name_the_field(http, fields, param):
    body = {"model": SMOLLM, "input": "Hi", **fields}
    assert error_of(http.post(RESPONSES, json=body), 400)["param"] == param


def test_text_before_a_call_is_its_own_message_item():
    output = OutputItems(with_logprobs=False)
    generation_events = [TextDelta(0, "Let me check."), ToolCallDelta(0, 0, "call1", "get_weather"),
                         ToolCallDelta(0, 0, arguments='{"city": "Paris"}'), Finished(0, "tool_calls")]
    events = [event for source in generation_events for event in output.feed(source)]
    assert [(event["type"], event.get("output_index")) for event in events] == [
        ("response.output_item.added", 0), ("response.content_part.added", 0), ("response.output_text.delta", 0),
        ("response.output_text.done", 0), ("response.content_part.done", 0), ("response.output_item.done", 0),
        ("response.output_item.added", 1), ("response.function_call_arguments.delta", 1),
        ("response.function_call_arguments.done", 1), ("response.output_item.done", 1),
    ]
    assert [item["type"] for item in output.items] == ["message", "function_call"] and output.status == "completed"
    assert output.items[1]["call_id"] == "call1" and output.items[1]["arguments"] == '{"city": "Paris"}'


@pytest.mark.parametrize("arguments", ["[" * 100_000, '{"a":' + "1" * 5000 + "}"], ids=["deep", "long-number"])
def test_arguments_json_cannot_read_are_a_400(http, arguments):
    # json.loads raises RecursionError and ValueError here, not JSONDecodeError
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": arguments}
    body = {"model": SMOLLM, "input": [call]}
    assert error_of(http.post(RESPONSES, json=body), 400)["param"] == "input[0].arguments"


NAN_CASES = [
    ('"input": [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}, '
     '{"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "ok", '
     '"score": NaN}]}]', "input[1].output"),
    ('"input": "Hi", "tools": [{"type": "function", "name": "f", "parameters": {"type": "object", '
     '"properties": {"x": {"type": "number", "maximum": Infinity}}}}]', "tools[0].parameters"),
    ('"input": "Hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "number", '
     '"maximum": NaN}}}', "text.format.schema"),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("fields", "param"), NAN_CASES, ids=["output", "tool", "format"])
def test_nan_that_could_not_be_stored_is_a_400_before_generating(http, fields, param, stream):
    # Python's JSON parser takes NaN and Infinity; the store (rightly) does not, so they are refused up front
    body = f'{{"model": "{SMOLLM}", "stream": {json.dumps(stream)}, {fields}}}'
    response = http.post(RESPONSES, content=body, headers={"content-type": "application/json"})
    assert error_of(response, 400)["param"] == param


def test_a_store_failure_after_a_stream_began_ends_it_with_response_failed():
    # no request can make the store fail any more, so the route's stream runs against a failing store
    import asyncio
    import sqlite3
    from types import SimpleNamespace

    from studiolo.api.responses import routes as responses_routes
    from studiolo.api.responses.render import ResponseInfo
    from studiolo.api.responses.schemas import ResponseBody
    from studiolo.service.types import Usage

    class Generation:
        usage = Usage(prompt_tokens=5, completion_tokens=1)

        async def events(self):
            yield TextDelta(0, "Hi")
            yield Finished(0, "stop")

        def cancel(self):
            pass

    class Conversations:
        async def save(self, *args):
            raise sqlite3.OperationalError("disk I/O error")

    body = ResponseBody(model=SMOLLM, input="Hi")
    info = ResponseInfo("resp_1", SMOLLM, 0, None, None, body.settings())
    run = SimpleNamespace(id="resp_1", generation=Generation())

    async def collect():
        return [chunk async for chunk in responses_routes._events(Conversations(), run, info, False)]

    events = [json.loads(chunk.split("data: ", 1)[1]) for chunk in asyncio.run(collect())]
    assert [event["type"] for event in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.failed",
    ]
    assert [event["sequence_number"] for event in events] == list(range(9))
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"] == {
        "code": "server_error", "message": "disk I/O error", "type": "server_error", "param": None}
    assert failed["output"][0]["content"][0]["text"] == "Hi" and failed["usage"]["output_tokens"] == 1


@pytest.mark.parametrize("field", ["max_output_tokens", "top_k", "seed", "top_logprobs"])
def test_booleans_are_not_integers(http, field):
    body = {"model": SMOLLM, "input": "Hi", field: True}
    assert error_of(http.post(RESPONSES, json=body), 400)["param"] == field
