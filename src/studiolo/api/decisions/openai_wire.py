"""OpenAI's ``POST /v1/decisions``: the request read into domain values, the answers written back
(the ``openai`` package's ``client.decisions.create`` and its ``Decision`` type; docs/API.md).

``input`` is a string (one user message) or items: messages (``user``, ``developer``, ``system``,
``assistant``), ``function_call`` / ``function_call_output`` and ``custom_tool_call`` /
``custom_tool_call_output`` pairs (an output must answer an earlier call). Questions are
``predicate``, ``choice`` (2–255 typed values: ``"true"`` and ``true`` differ on the wire, but read
the same to the model, so both in one question are a 400) and ``score`` (2–10 ordered levels).
"""

from __future__ import annotations

import json
from typing import Any

from studiolo.api.decisions.fields import need, parts_text
from studiolo.domain.chat import ChatMessage, ToolCall
from studiolo.domain.errors import InvalidRequest
from studiolo.service.decision_prompt import PREDICATE_LABELS, Question
from studiolo.service.decisions import Answer, Decisions

ROLES = {"user": "user", "developer": "system", "system": "system", "assistant": "assistant"}
CALLS = {"function_call": "arguments", "custom_tool_call": "input"}  # item type -> field holding its input
OUTPUTS = ("function_call_output", "custom_tool_call_output")


def input_messages(value: Any) -> list[ChatMessage]:
    """``input`` as chat messages."""
    if isinstance(value, str):
        return [ChatMessage("user", value)]
    items = need(value, list, "input", "a string or a list of items")
    if not items:
        raise InvalidRequest("'input' is empty", "input")
    messages: list[ChatMessage] = []
    calls: dict[str, str] = {}  # call id -> function name
    for index, item in enumerate(items):
        where = f"input[{index}]"
        item = need(item, dict, where, "an object")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, where))
        elif kind in CALLS:
            call_id = need(item.get("call_id"), str, f"{where}.call_id", "a string")
            name = need(item.get("name"), str, f"{where}.name", "a string")
            given = need(item.get(CALLS[kind]), str, f"{where}.{CALLS[kind]}", "a string")
            arguments = given if kind == "function_call" else json.dumps({"input": given}, ensure_ascii=False)
            calls[call_id] = name
            messages.append(ChatMessage("assistant", None, tool_calls=(ToolCall(call_id, name, arguments),)))
        elif kind in OUTPUTS:
            call_id = need(item.get("call_id"), str, f"{where}.call_id", "a string")
            if call_id not in calls:
                raise InvalidRequest(f"no earlier call has the id '{call_id}'", f"{where}.call_id")
            output = parts_text(item.get("output"), f"{where}.output")
            messages.append(ChatMessage("tool", output, tool_call_id=call_id, name=calls[call_id]))
        else:
            raise InvalidRequest(f"unknown input item type {kind!r}", f"{where}.type", code="invalid_value")
    return messages


def _message(item: dict, where: str) -> ChatMessage:
    role = item.get("role")
    if role not in ROLES:
        raise InvalidRequest(f"unknown role {role!r} (expected one of: {', '.join(ROLES)})", f"{where}.role",
                             code="invalid_value")
    text_types = ("output_text", "refusal") if role == "assistant" else ("input_text",)
    return ChatMessage(ROLES[role], parts_text(item.get("content"), f"{where}.content", text_types))


def questions_of(value: Any) -> list[Question]:
    questions = need(value, list, "questions", "a list of questions")
    return [_question(item, f"questions[{index}]") for index, item in enumerate(questions)]


def _question(item: Any, where: str) -> Question:
    item = need(item, dict, where, "an object")
    if item.get("name") is not None:
        need(item["name"], str, f"{where}.name", "a string")
    kind = item.get("type")
    instructions = parts_text(item.get("instructions"), f"{where}.instructions")
    if kind == "predicate":
        return Question("predicate", instructions, PREDICATE_LABELS, param=where, labels_param=where)
    if kind == "choice":
        choices = need(item.get("choices"), list, f"{where}.choices", "a list of choices")
        values = [need(need(c, dict, f"{where}.choices[{i}]", "an object").get("value"), (str, bool),
                       f"{where}.choices[{i}].value", "a string or a boolean") for i, c in enumerate(choices)]
        descriptions = tuple(_description(c, f"{where}.choices[{i}].description") for i, c in enumerate(choices))
        return Question("choice", instructions, tuple(_label(v) for v in values), descriptions, where,
                        f"{where}.choices", tuple(f"{where}.choices[{i}].value" for i in range(len(values))))
    if kind == "score":
        levels = need(item.get("levels"), list, f"{where}.levels", "a list of levels")
        labels = tuple(need(need(lv, dict, f"{where}.levels[{i}]", "an object").get("label"), str,
                            f"{where}.levels[{i}].label", "a string") for i, lv in enumerate(levels))
        descriptions = tuple(_description(lv, f"{where}.levels[{i}].description") for i, lv in enumerate(levels))
        return Question("score", instructions, labels, descriptions, where, f"{where}.levels",
                        tuple(f"{where}.levels[{i}].label" for i in range(len(labels))))
    raise InvalidRequest(f"unknown question type {kind!r} (expected predicate, choice or score)", f"{where}.type",
                         code="invalid_value")


def _description(item: dict, param: str) -> str | None:
    value = item.get("description")
    return None if value is None else need(value, str, param, "a string")


def _label(value: str | bool) -> str:
    """A choice value as the model writes it: a string as it is, a boolean as JSON (true, false)."""
    return json.dumps(value) if isinstance(value, bool) else value


def render(result: Decisions, questions: list[Question], body_questions: list[dict]) -> dict[str, Any]:
    answers = [_answer(q, a, item) for q, a, item in zip(questions, result.answers, body_questions, strict=True)]
    usage = {"input_tokens": result.input_tokens,
             "input_tokens_details": {"cached_tokens": result.cached_tokens, "cache_write_tokens": 0},
             "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": result.input_tokens}
    return {"model": result.model, "answers": answers, "usage": usage}


def _answer(question: Question, answer: Answer, item: dict) -> dict[str, Any]:
    name = item.get("name")
    p = answer.probabilities
    if question.kind == "predicate":
        return {"type": "predicate", "name": name, "probability": p[0]}
    if question.kind == "choice":
        values = [choice["value"] for choice in item["choices"]]
        return {"type": "choice", "name": name, "choice": values[answer.top], "confidence": answer.top_mass,
                "probabilities": [{"value": v, "probability": pv} for v, pv in zip(values, p, strict=True)]}
    return {"type": "score", "name": name, "score": answer.expected_index, "confidence": answer.top_mass,
            "probabilities": [{"value": i, "label": label, "probability": pv}
                              for i, (label, pv) in enumerate(zip(question.labels, p, strict=True))]}
