"""POST /v1/responses/compact end to end with SmolLM2 and the openai client: the model summarizes
the conversation, the compacted window (its user messages, then a compaction item) is stored, and
later turns continue from it by previous_response_id or by passing the window back as input.

Summaries are greedy and bounded (max_output_tokens), so none can run away; what the model writes
is not judged (a 135M model's summary says little), only where it goes. What the model saw is read
from the server's prompt log.
"""

from __future__ import annotations

import pytest

from studiolo.service.compaction import SUMMARY_REQUEST
from studiolo.service.items import SUMMARY_HEADING
from tests.conftest import NO_PENALTY, SMOLLM, PromptLog
from tests.responses_spec import compacted_errors, item_list_errors
from tests.test_errors import error_of

COMPACT = "/v1/responses/compact"
SUMMARY_TOKENS = 24
GREEDY = {"temperature": 0, **NO_PENALTY}
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
ASSISTANT_TURN = "<|im_start|>assistant"  # SmolLM2's ChatML


def create(client, prompt, **fields):
    return client.responses.create(model=SMOLLM, input=prompt, max_output_tokens=fields.pop("max_output_tokens", 8),
                                   temperature=0, extra_body=NO_PENALTY, **fields)


def compact(client, **fields):
    return client.responses.compact(model=SMOLLM, extra_body={**GREEDY, "max_output_tokens": SUMMARY_TOKENS},
                                    **fields)


def _last_prompt(log: PromptLog, seen: int) -> str:
    log.wait_for(seen + 1)
    assert len(log.prompts) == seen + 1
    return log.prompts[seen]


def _texts(output) -> list[tuple[str, str]]:
    return [(item["type"], item["content"][0]["text"] if item["type"] == "message" else item["encrypted_content"])
            for item in output]


def test_a_stored_conversation_compacts_to_its_user_messages_and_a_summary(client, http, prompt_log):
    first = create(client, "My name is Ada.")
    second = create(client, "I live in Paris.", previous_response_id=first.id)
    seen = len(prompt_log.prompts)
    compacted = compact(client, previous_response_id=second.id)
    prompt = _last_prompt(prompt_log, seen)  # the conversation as it was, then the request for a summary
    assert prompt.index("My name is Ada.") < prompt.index(first.output_text) < prompt.index("I live in Paris.")
    assert prompt.index(second.output_text) < prompt.index(SUMMARY_REQUEST)

    assert compacted.object == "response.compaction" and compacted.id.startswith("resp_")
    body = http.get(f"/v1/responses/{compacted.id}").json()  # stored
    assert body["id"] == compacted.id and len(body["output"]) == len(compacted.output)
    assert compacted_errors(body) == []
    output = _texts(body["output"])
    assert output[:2] == [("message", "My name is Ada."), ("message", "I live in Paris.")]
    assert [kind for kind, _ in output] == ["message", "message", "compaction"] and output[2][1]
    usage = compacted.usage
    assert 0 < usage.output_tokens <= SUMMARY_TOKENS and usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens > second.usage.input_tokens + second.usage.output_tokens  # the summary request
    listed = http.get(f"/v1/responses/{compacted.id}/input_items").json()
    assert listed["data"] == [] and not listed["has_more"]  # it added nothing: it replaced the window


def test_turns_continue_from_the_compacted_window_by_id_or_as_input(client, http, prompt_log):
    first = create(client, "My name is Ada.")
    second = create(client, "I live in Paris.", previous_response_id=first.id)
    compacted = http.post(COMPACT, json={"model": SMOLLM, "previous_response_id": second.id, **GREEDY,
                                         "max_output_tokens": SUMMARY_TOKENS}).json()
    assert http.get(f"/v1/responses/{compacted['id']}").json() == compacted  # shown as the POST returned it
    summary = compacted["output"][-1]["encrypted_content"]

    seen = len(prompt_log.prompts)
    by_id = create(client, "What is my name?", previous_response_id=compacted["id"])
    prompt = _last_prompt(prompt_log, seen)
    # the user messages, the summary as the assistant's one message, the new question; the replies
    # before the compaction are gone (only the summary's turn and the one to write are assistant turns)
    assert prompt.index("My name is Ada.") < prompt.index("I live in Paris.") < prompt.index(SUMMARY_HEADING + summary)
    assert prompt.index(summary) < prompt.index("What is my name?") and prompt.count(ASSISTANT_TURN) == 2
    assert client.responses.retrieve(by_id.id).previous_response_id == compacted["id"]

    seen = len(prompt_log.prompts)
    window = compacted["output"] + [{"role": "user", "content": "What is my name?"}]
    as_input = create(client, window)  # stateless: the window passed back, as OpenAI's guide says
    assert _last_prompt(prompt_log, seen) == prompt
    listed = http.get(f"/v1/responses/{as_input.id}/input_items", params={"order": "asc"}).json()
    assert [item["type"] for item in listed["data"]] == ["message", "message", "compaction", "message"]
    assert item_list_errors(listed) == []


def test_compacting_input_items_with_calls_and_compacting_again(client, http, prompt_log):
    items = [{"role": "developer", "content": "Be brief."},
             {"role": "user", "content": "What is the weather in Oslo?"},
             {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
             {"type": "function_call_output", "call_id": "c1", "output": "rain, 7 C"},
             {"role": "assistant", "content": "It rains in Oslo, 7 C."}]
    seen = len(prompt_log.prompts)
    compacted = compact(client, input=items, instructions="You summarize conversations.")
    prompt = _last_prompt(prompt_log, seen)
    assert prompt.index("You summarize conversations.") < prompt.index("rain, 7 C") < prompt.index(SUMMARY_REQUEST)
    body = http.get(f"/v1/responses/{compacted.id}").json()
    assert [kind for kind, _ in _texts(body["output"])] == ["message", "compaction"] and compacted_errors(body) == []

    again = compact(client, previous_response_id=compacted.id, input="And tomorrow?")
    body = http.get(f"/v1/responses/{again.id}").json()
    output = _texts(body["output"])  # every user message so far, and one compaction item: the newest
    assert [text for _, text in output[:2]] == ["What is the weather in Oslo?", "And tomorrow?"]
    assert [kind for kind, _ in output] == ["message", "message", "compaction"] and compacted_errors(body) == []

    # LM Studio's stateful chat continues from it too; the stored turn lists its input items as usual
    chat = http.post("/api/v1/chat", json={"model": SMOLLM, "input": "Thanks.", "previous_response_id": again.id,
                                           "temperature": 0, "max_output_tokens": 4})
    assert chat.status_code == 200, chat.text
    assert item_list_errors(http.get(f"/v1/responses/{chat.json()['response_id']}/input_items").json()) == []


def test_a_compacted_response_is_deleted_as_any(client, http):
    compacted = compact(client, input="Remember the number 7.")
    assert http.delete(f"/v1/responses/{compacted.id}").json() == {
        "id": compacted.id, "object": "response.deleted", "deleted": True}
    assert error_of(http.get(f"/v1/responses/{compacted.id}"), 404)["code"] == "response_not_found"
    body = {"model": SMOLLM, "input": "Hi", "previous_response_id": compacted.id}
    assert error_of(http.post("/v1/responses", json=body), 400)["code"] == "previous_response_not_found"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({}, "input"),
        ({"input": []}, "input"),
        ({"model": None}, "model"),
        ({"previous_response_id": "chatcmpl-1"}, "previous_response_id"),
        ({"previous_response_id": "resp_" + "0" * 32}, "previous_response_id"),
        ({"input": [{"type": "compaction"}]}, "input[0].encrypted_content"),
        ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type"),  # reasoning items are taken
        ({"input": "Hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "Hi", "temperature": 3}, "temperature"),
        ({"input": "Hi", "conversation": "conv_1"}, "conversation"),
        ({"input": [{"type": "function_call_output", "call_id": "nobody", "output": "x"}]}, "input"),
        ({"input": "word " * 40_000}, "input"),  # longer than the context
    ],
)
def test_bad_compaction_requests_name_the_field(http, fields, param):
    body = {"model": SMOLLM, **fields}
    assert error_of(http.post(COMPACT, json=body), 400)["param"] == param
