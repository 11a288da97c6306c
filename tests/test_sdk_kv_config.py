"""LM Studio's KV config stack and chat history read into the domain's options and messages
(api/lmstudio_sdk/handlers/kv_config.py, chat_history.py, llm_tools.py): no model, no server."""

from __future__ import annotations

import json

import pytest

from studiolo.api.lmstudio_sdk.handlers.chat_history import chat_messages
from studiolo.api.lmstudio_sdk.handlers.kv_config import merged_fields, prediction_config
from studiolo.api.lmstudio_sdk.handlers.predict import templated_text
from studiolo.api.lmstudio_sdk.handlers.prediction_packets import PacketWriter, stop_reason
from studiolo.domain.chat import ChatMessage, ToolCall
from studiolo.domain.errors import InvalidRequest
from studiolo.domain.sampling import SamplingParams
from studiolo.service.types import Finished, PromptProgress, ReasoningDelta, TextDelta, ToolCallDelta

P = "llm.prediction."


def stack(*layers: dict) -> dict:
    return {"layers": [{"layerName": f"layer{i}", "config": {"fields": [{"key": k, "value": v}
                                                                         for k, v in layer.items()]}}
                       for i, layer in enumerate(layers)]}


def config(**fields):
    return prediction_config(stack({P + key: value for key, value in fields.items()}))


def no_files(identifier: str, param: str) -> bytes:
    raise AssertionError("no file expected")


# --- the stack -----------------------------------------------------------------------------------


def test_later_layers_win_and_unknown_keys_are_ignored():
    read = prediction_config(stack({P + "temperature": 0.3, P + "systemPrompt": "ui only", "llm.load.x": 1},
                                   {P + "temperature": 0.7}))
    assert read.options.sampling.temperature == 0.7
    assert read.fields == {P + "temperature": 0.7}  # only what was read is echoed


def test_an_empty_stack_gives_lm_studios_defaults():
    read = prediction_config({"layers": []})
    assert read.options.sampling == SamplingParams()
    assert read.options.max_tokens is None and read.options.stop == () and read.tools is None
    assert read.options.given == frozenset() and read.options.report_progress
    assert prediction_config(None).options.sampling == SamplingParams()


@pytest.mark.parametrize("bad, param", [
    ([], "predictionConfigStack"),
    ({"layers": [{"layerName": "x"}]}, "predictionConfigStack.layers[0]"),
    ({"layers": [{"layerName": "x", "config": {"fields": [{"value": 1}]}}]},
     "predictionConfigStack.layers[0].config.fields[0]"),
])
def test_a_malformed_stack_is_named(bad, param):
    with pytest.raises(InvalidRequest) as caught:
        merged_fields(bad)
    assert caught.value.param == param


# --- each key ------------------------------------------------------------------------------------


def test_sampling_keys_take_effect():
    read = config(temperature=0, topKSampling=5, topPSampling={"checked": True, "value": 0.5},
                  minPSampling={"checked": True, "value": 0.2}, repeatPenalty={"checked": True, "value": 1.3},
                  seed={"checked": True, "value": 42}, **{"llama.presencePenalty": {"checked": True, "value": 0.5},
                                                          "llama.frequencyPenalty": {"checked": True, "value": -0.5}})
    assert read.options.sampling == SamplingParams(temperature=0.0, top_k=5, top_p=0.5, min_p=0.2, repeat_penalty=1.3,
                                                   seed=42, presence_penalty=0.5, frequency_penalty=-0.5)
    assert read.options.given == {"temperature", "top_k", "top_p", "min_p", "repeat_penalty"}


def test_logit_bias_pairs():
    read = config(**{"llama.logitBias": [[2, "-inf"], [7, 1.5]]})
    assert read.options.sampling.logit_bias == {2: -100.0, 7: 1.5}


def test_unchecked_samplers_are_off():
    read = config(topPSampling={"checked": False, "value": 0.5}, minPSampling={"checked": False},
                  repeatPenalty={"checked": True, "value": False}, seed={"checked": False, "value": 7})
    sampling = read.options.sampling
    assert (sampling.top_p, sampling.min_p, sampling.repeat_penalty, sampling.seed) == (1.0, 0.0, 1.0, None)


def test_max_tokens_checked_and_unchecked():
    assert config(maxPredictedTokens={"checked": True, "value": 12}).options.max_tokens == 12
    unchecked = config(maxPredictedTokens={"checked": False, "value": 12}).options
    assert unchecked.max_tokens is None and "max_tokens" in unchecked.given  # a preset does not set a limit


def test_stop_strings():
    assert config(stopStrings=["\n\n", "", "END"]).options.stop == ("\n\n", "END")


def test_structured_json_schema_and_none():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    read = config(structured={"type": "json", "jsonSchema": schema})
    assert read.options.constraint is not None and read.options.constraint_param == P + "structured"
    assert config(structured={"type": "none"}).options.constraint is None


def test_tools_and_tool_choice():
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}}
    tool = {"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": parameters}}
    read = config(tools={"type": "toolArray", "tools": [tool]}, toolChoice={"type": "generic", "mode": "required"})
    assert read.tools is not None and read.tools.choice == "required"
    assert [spec.name for spec in read.tools.specs] == ["get_weather"]
    assert config(tools={"type": "none"}).tools is None


def test_reasoning_template_and_draft_keys():
    read = config(**{"reasoning.enableThinking": False, "reasoning.budgetTokens": {"checked": True, "value": 64},
                     "reasoning.parsing": {"enabled": False, "startString": "<think>", "endString": "</think>"},
                     "speculativeDecoding.draftModel": "ngram"})
    assert (read.reasoning_option, read.options.reasoning_budget, read.reasoning_output) == ("off", 64, "raw")
    assert read.options.draft_model == "ngram"
    assert config(**{"reasoning.enableThinking": True}).reasoning_option == "on"


# what lmstudio 1.5.0's complete() sends (json_api.py)
COMPLETION_TEMPLATE = {"type": "jinja", "jinjaPromptTemplate": {
    "bosToken": "", "eosToken": "", "template": "{% for message in messages %}{{ message['content'] }}{% endfor %}",
    "inputConfig": {"messagesConfig": {"contentConfig": {"type": "string"}}, "useTools": False}}, "stopStrings": []}


def test_the_sdks_completion_template_joins_the_messages():
    read = config(promptTemplate=COMPLETION_TEMPLATE)
    assert read.template is not None and read.template.kind == "raw"
    assert templated_text(read.template, [ChatMessage("user", "Once upon")]) == "Once upon"


def test_a_manual_template_wraps_each_message():
    manual = {"beforeSystem": "S:", "afterSystem": "\n", "beforeUser": "U:", "afterUser": "\n",
              "beforeAssistant": "A:", "afterAssistant": "\n"}
    read = config(promptTemplate={"type": "manual", "manualPromptTemplate": manual, "stopStrings": ["U:"]})
    assert read.options.stop == ("U:",)
    text = templated_text(read.template, [ChatMessage("system", "be brief"), ChatMessage("user", "hi")])
    assert text == "S:be brief\nU:hi\nA:"


@pytest.mark.parametrize("key, value, says", [
    ("temperature", "hot", "must be a number"),
    ("temperature", 3, "<= 2"),
    ("temperature", True, "must be a number"),
    ("maxPredictedTokens", {"checked": True, "value": 0}, ">= 1"),
    ("maxPredictedTokens", 5, "{checked: boolean, value}"),
    ("maxPredictedTokens", {"checked": True}, "no 'value'"),
    ("topKSampling", 2.5, "must be an integer"),
    ("topPSampling", {"checked": True, "value": 1.5}, "<= 1"),
    ("repeatPenalty", {"checked": True, "value": 0}, "> 0"),
    ("stopStrings", "END", "list of strings"),
    ("llama.logitBias", [[1]], "[token, bias] pairs"),
    ("llama.logitBias", [[-1, 2]], ">= 0"),
    ("structured", {"type": "xml"}, "type"),
    ("structured", {"type": "json"}, "jsonSchema"),
    ("tools", {"type": "toolArray", "tools": [{"type": "function", "function": {}}]}, "function.name"),
    ("toolChoice", {"type": "generic", "mode": "sometimes"}, "mode"),
    ("toolChoice", {"type": "generic", "mode": "required"}, "offers no tools"),
    ("reasoning.enableThinking", "yes", "boolean"),
    ("promptTemplate", {"type": "jinja", "jinjaPromptTemplate": {"template": "{{ 7*7 }}"}, "stopStrings": []},
     "runs no Jinja"),
    ("speculativeDecoding.draftModel", 3, "model key"),
])
def test_a_bad_value_is_an_error_naming_its_key(key, value, says):
    with pytest.raises(InvalidRequest) as caught:
        config(**{key: value})
    assert caught.value.param == (P + "toolChoice" if key == "toolChoice" else P + key) or \
        caught.value.param.startswith(P + key)
    assert says in str(caught.value)


def test_a_bad_tool_schema_is_named_by_its_place():
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}
    with pytest.raises(InvalidRequest) as caught:
        config(tools={"type": "toolArray", "tools": [tool]})
    assert caught.value.param == P + "tools.tools[0].function.parameters"


def test_tools_and_structured_output_together_are_refused():
    tool = {"type": "function", "function": {"name": "f"}}
    with pytest.raises(InvalidRequest) as caught:
        config(tools={"type": "toolArray", "tools": [tool]}, structured={"type": "json", "jsonSchema": {}})
    assert caught.value.param == P + "structured"


# --- the history ---------------------------------------------------------------------------------


def text(role: str, value: str) -> dict:
    return {"role": role, "content": [{"type": "text", "text": value}]}


def test_history_with_tool_calls_and_results():
    history = {"messages": [
        text("system", "sys"), text("user", "weather?"),
        {"role": "assistant", "content": [{"type": "text", "text": "let me see"}, {
            "type": "toolCallRequest", "toolCallRequest": {"type": "function", "id": "c1", "name": "get_weather",
                                                           "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": [{"type": "toolCallResult", "content": "sunny", "toolCallId": "c1"}]},
    ]}
    messages = chat_messages(history, no_files)
    assert [m.role for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[2].content == "let me see"
    assert messages[2].tool_calls == (ToolCall("c1", "get_weather", json.dumps({"city": "Paris"})),)
    assert (messages[3].content, messages[3].tool_call_id, messages[3].name) == ("sunny", "c1", "get_weather")


def test_calls_and_results_without_ids_are_paired_by_place():
    history = {"messages": [text("user", "two cities"), {"role": "assistant", "content": [
        {"type": "toolCallRequest", "toolCallRequest": {"type": "function", "name": "f", "arguments": {"x": 1}}},
        {"type": "toolCallRequest", "toolCallRequest": {"type": "function", "name": "g"}}]},
        {"role": "tool", "content": [{"type": "toolCallResult", "content": "one"},
                                     {"type": "toolCallResult", "content": "two"}]}]}
    messages = chat_messages(history, no_files)
    assert messages[1].content is None
    assert [(m.tool_call_id, m.name) for m in messages[2:]] == [("call_1_0", "f"), ("call_1_1", "g")]


@pytest.mark.parametrize("history, param", [
    ({"messages": "hi"}, "history"),
    ({"messages": [{"role": "robot", "content": []}]}, "history.messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "toolCallResult", "content": "x"}]}]},
     "history.messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, "history.messages[0].content[0].text"),
    ({"messages": [{"role": "tool", "content": [{"type": "toolCallResult", "content": "x", "toolCallId": "nope"}]}]},
     "history.messages[0].content"),
])
def test_a_bad_history_is_named(history, param):
    with pytest.raises(InvalidRequest) as caught:
        chat_messages(history, no_files)
    assert caught.value.param == param


def test_an_image_part_asks_for_the_uploaded_bytes():
    asked = []

    def files(identifier: str, param: str) -> bytes:
        asked.append((identifier, param))
        return b"png"

    history = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "file", "name": "a.png", "identifier": "f-1", "sizeBytes": 3, "fileType": "image"}]}]}
    message = chat_messages(history, files)[0]
    assert asked == [("f-1", "history.messages[0].content[1].identifier")]
    assert message.content == "what is this?" and [image.data for image in message.images] == [b"png"]


# --- packets ------------------------------------------------------------------------------------


def test_packets_of_reasoning_text_and_a_call():
    writer = PacketWriter(prompt_tokens=10)
    events = [PromptProgress(0, 0.5), ReasoningDelta(0, "hmm"), TextDelta(0, "Hi"),
              ToolCallDelta(0, 0, "id1", "f"), ToolCallDelta(0, 0, arguments='{"a"'),
              ToolCallDelta(0, 0, arguments=": 1}"), Finished(0, "tool_calls")]
    packets = [packet for event in events for packet in writer.packets(event)]
    kinds = [(p["type"], p.get("fragment", {}).get("reasoningType")) for p in packets]
    assert kinds == [("promptProcessingProgress", None), ("fragment", "reasoningStartTag"),
                     ("fragment", "reasoning"), ("fragment", "reasoningEndTag"), ("fragment", "none"),
                     ("toolCallGenerationStart", None), ("toolCallGenerationNameReceived", None),
                     ("toolCallGenerationArgumentFragmentGenerated", None),
                     ("toolCallGenerationArgumentFragmentGenerated", None), ("toolCallGenerationEnd", None)]
    assert packets[0]["details"] == {"cachedTokenCount": 0, "totalPromptTokenCount": 10,
                                     "processedPromptTokenCount": 5, "unprocessedPromptTokenCount": 5}
    assert "".join(p["fragment"]["content"] for p in packets if p["type"] == "fragment") == "<think>hmm</think>Hi"
    assert packets[-1]["toolCallRequest"] == {"type": "function", "id": "id1", "name": "f", "arguments": {"a": 1}}
    assert stop_reason(writer.finished) == "toolCalls"


def test_a_call_cut_short_fails():
    writer = PacketWriter(prompt_tokens=1)
    writer.packets(ToolCallDelta(0, 0, "id1", "f"))
    writer.packets(ToolCallDelta(0, 0, arguments='{"a": '))
    packets = writer.packets(Finished(0, "length", "max_tokens"))
    assert [p["type"] for p in packets] == ["toolCallGenerationFailed"]
    assert packets[0]["rawContent"] == '{"a": ' and "'f'" in packets[0]["error"]["title"]
    assert stop_reason(writer.finished) == "maxPredictedTokensReached"


@pytest.mark.parametrize("finished, reason", [
    (Finished(0, "stop", "eos"), "eosFound"), (Finished(0, "stop", "stop_string", "END"), "stopStringFound"),
    (Finished(0, "length", "context_length"), "contextLengthReached"),
    (Finished(0, "stop", "cancelled"), "userStopped"),
    (None, "failed"),
])
def test_stop_reasons(finished, reason):
    assert stop_reason(finished) == reason
