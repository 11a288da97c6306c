"""Anthropic's content blocks and stream events from the service's events, and its error shape,
without a model (the end-to-end tests are tests/test_anthropic_*.py with the SDK)."""

from __future__ import annotations

from studiolo.api.anthropic.render import ContentBlocks, stop_reason
from studiolo.api.errors import APIError, anthropic_field, describe_anthropic_validation
from studiolo.service.types import Finished, ReasoningDelta, TextDelta, ToolCallDelta


def feed_all(events) -> tuple[ContentBlocks, list[tuple[str, dict]]]:
    blocks, out = ContentBlocks(), []
    for event in events:
        out.extend(blocks.feed(event))
    return blocks, out


def test_thinking_then_text_then_calls():
    blocks, events = feed_all([
        ReasoningDelta(0, "Hm"), ReasoningDelta(0, "m."), TextDelta(0, ""), TextDelta(0, "Let me look."),
        ToolCallDelta(0, 0, "a1", "get_weather", ""), ToolCallDelta(0, 0, arguments='{"city": '),
        ToolCallDelta(0, 0, arguments='"Paris"}'), ToolCallDelta(0, 1, "a2", "get_time", '{}'),
        Finished(0, "tool_calls"),
    ])
    assert blocks.content == [
        {"type": "thinking", "thinking": "Hmm.", "signature": ""}, {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "a1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "a2", "name": "get_time", "input": {}}]
    kinds = [(name, payload.get("index"), payload.get("delta", {}).get("type")) for name, payload in events]
    assert kinds == [
        ("content_block_start", 0, None), ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "thinking_delta"), ("content_block_delta", 0, "signature_delta"),
        ("content_block_stop", 0, None), ("content_block_start", 1, None), ("content_block_delta", 1, "text_delta"),
        ("content_block_stop", 1, None), ("content_block_start", 2, None),
        ("content_block_delta", 2, "input_json_delta"), ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None), ("content_block_start", 3, None),
        ("content_block_delta", 3, "input_json_delta"), ("content_block_stop", 3, None)]
    assert events[8][1]["content_block"] == {"type": "tool_use", "id": "a1", "name": "get_weather", "input": {}}
    assert stop_reason(blocks.finished) == "tool_use"


def test_a_call_cut_short_has_an_empty_input():
    blocks, _ = feed_all([ToolCallDelta(0, 0, "a1", "f", '{"city": "Pa'), Finished(0, "length", "max_tokens")])
    assert blocks.content[0]["input"] == {} and stop_reason(blocks.finished) == "max_tokens"


def test_stop_reasons():
    assert stop_reason(Finished(0, "stop", "eos")) == "end_turn"
    assert stop_reason(Finished(0, "stop", "stop_string", "##")) == "stop_sequence"
    assert stop_reason(Finished(0, "length", "context_length")) == "model_context_window_exceeded"
    assert stop_reason(Finished(0, "stop", "cancelled")) == "end_turn"


def test_errors_name_the_field_dotted_and_map_unavailable_to_overloaded():
    assert anthropic_field("messages[1].content[0].type") == "messages.1.content.0.type"
    error = APIError(400, "'messages[1].content' is empty", param="messages[1].content")
    assert error.body_anthropic()["error"] == {"type": "invalid_request_error",
                                               "message": "messages.1.content: 'messages.1.content' is empty"}
    unavailable = APIError(503, "the model is unloading", type="server_error")
    assert unavailable.anthropic_status == 529
    assert unavailable.body_anthropic()["error"]["type"] == "overloaded_error"
    assert APIError(401, "no token").body_anthropic()["error"]["type"] == "authentication_error"
    assert APIError(429, "queue full").body_anthropic()["error"]["type"] == "rate_limit_error"
    assert APIError(507, "disk full").body_anthropic()["error"]["type"] == "api_error"


def test_validation_errors_leave_the_block_tags_out_of_the_path():
    errors = [
        {"type": "string_type", "loc": ("body", "messages", 0, "content", "str"), "msg": "Input should be a string"},
        {"type": "missing", "loc": ("body", "messages", 0, "content", "list[...]", 1, "image", "source", "base64",
                                    "data"), "msg": "Field required"},
    ]
    error = describe_anthropic_validation(errors)
    assert error.body_anthropic()["error"]["message"] == "messages.0.content.1.source.data: Field required"
    thinking = [{"type": "greater_than_equal", "loc": ("body", "thinking", "budget_tokens"), "msg": "too small"}]
    assert describe_anthropic_validation(thinking).param == "thinking.budget_tokens"
