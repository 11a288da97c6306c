"""TypeSafe's System One, ``POST /v1/systemone``, as llama.cpp and vLLM serve it (docs/API.md).

``state`` is a string, an object or an array (not a string: given to the model as JSON text), with
an optional ``instructions`` string (vLLM's: a system message before it). ``questions`` maps ids to
``{type, instructions, criteria}``, answered in key order:

- ``choice``: ``criteria`` is ``{option: description or null}`` (2–255 options);
- ``score``: ``criteria`` lists the levels, lowest first: a list of labels, or ``{label:
  description or null}`` (2–10 levels);
- ``noul`` (a yes/no question): ``criteria`` is optional, ``{"true": description, "false": description}``.

Answers follow llama.cpp's shapes; ``confidence`` is (p_max − 1/n)/(1 − 1/n): 0 when the labels are
equally likely, 1 when one is certain.
"""

from __future__ import annotations

import json
from typing import Any

from studiolo.api.decisions.fields import need
from studiolo.domain.chat import ChatMessage
from studiolo.domain.errors import InvalidRequest
from studiolo.service.decision_prompt import PREDICATE_LABELS, Question
from studiolo.service.decisions import Answer, Decisions


def state_messages(state: Any, instructions: Any) -> list[ChatMessage]:
    if state is None:
        raise InvalidRequest("'state' is required", "state", code="missing_required_parameter")
    text = state if isinstance(state, str) else json.dumps(state, ensure_ascii=False)
    messages = [ChatMessage("user", text)]
    if instructions is not None:
        messages.insert(0, ChatMessage("system", need(instructions, str, "instructions", "a string")))
    return messages


def check_no_files(body: dict[str, Any]) -> None:
    for key in ("files", "images"):
        if body.get(key):
            raise InvalidRequest(f"'{key}' are not supported by decisions on this server: send text in 'state'", key,
                                 code="unsupported_value")


def questions_of(value: Any) -> list[Question]:
    questions = need(value, dict, "questions", "an object of questions by id")
    return [_question(item, f"questions.{key}") for key, item in questions.items()]


def _question(item: Any, where: str) -> Question:
    item = need(item, dict, where, "an object")
    kind = item.get("type")
    instructions = need(item.get("instructions"), str, f"{where}.instructions", "a string")
    criteria_param = f"{where}.criteria"
    criteria = item.get("criteria")
    if kind == "noul":
        described = need(criteria, dict, criteria_param, "an object") if criteria is not None else {}
        descriptions = tuple(_text(described.get(key), f"{criteria_param}.{key}") for key in ("true", "false"))
        return Question("predicate", instructions, PREDICATE_LABELS, descriptions, where, criteria_param)
    if kind == "choice":
        options = need(criteria, dict, criteria_param, "an object of options")
        return _listed("choice", instructions, options, where, criteria_param)
    if kind == "score":
        levels = need(criteria, (list, dict), criteria_param, "a list of levels or an object of them")
        if isinstance(levels, list):
            labels = [need(label, str, f"{criteria_param}[{i}]", "a string") for i, label in enumerate(levels)]
            return Question("score", instructions, tuple(labels), (), where, criteria_param,
                            tuple(f"{criteria_param}[{i}]" for i in range(len(labels))))
        return _listed("score", instructions, levels, where, criteria_param)
    raise InvalidRequest(f"unknown question type {kind!r} (expected choice, score or noul)", f"{where}.type",
                         code="invalid_value")


def _listed(kind: str, instructions: str, described: dict, where: str, param: str) -> Question:
    descriptions = tuple(_text(value, f"{param}.{key}") for key, value in described.items())
    return Question(kind, instructions, tuple(described), descriptions, where, param,
                    tuple(f"{param}.{key}" for key in described))


def _text(value: Any, param: str) -> str | None:
    return None if value is None else need(value, str, param, "a string or null")


def render(result: Decisions, questions: list[Question], ids: list[str]) -> dict[str, Any]:
    answers = {key: _answer(q, a) for key, q, a in zip(ids, questions, result.answers, strict=True)}
    usage = {"input_tokens": result.input_tokens, "output_tokens": 0,
             "input_tokens_details": {"cached_tokens": result.cached_tokens}}
    return {"model": result.model, "answers": answers, "usage": usage}


def _answer(question: Question, answer: Answer) -> dict[str, Any]:
    p = answer.probabilities
    if question.kind == "predicate":
        return {"type": "noul", "noul": p[0]}
    if question.kind == "choice":
        return {"type": "choice", "choice": question.labels[answer.top],
                "probabilities": dict(zip(question.labels, p, strict=True)), "confidence": answer.margin_over_uniform}
    return {"type": "score", "score": answer.expected_index,
            "legend": {str(i): label for i, label in enumerate(question.labels)},
            "probabilities": {str(i): pv for i, pv in enumerate(p)}, "confidence": answer.margin_over_uniform}
