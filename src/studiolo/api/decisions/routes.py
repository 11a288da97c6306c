"""``POST /v1/decisions`` (OpenAI) and ``POST /v1/systemone`` (TypeSafe's System One): the body read
into a ``DecisionRequest``, the service's answers written in each format; errors in OpenAI's shape."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from pydantic import Field

from studiolo.api.body import Body
from studiolo.api.decisions import openai_wire, systemone
from studiolo.api.decisions.fields import need
from studiolo.api.routing import CLIENT_CLOSED_REQUEST, make_router
from studiolo.api.sse import ClientDisconnected, until_disconnected
from studiolo.domain.auth import Permission
from studiolo.service.decisions import DecisionRequest, Decisions, DecisionService

router = make_router(prefix="/v1", permission=Permission.inference)


class DecisionsBody(Body):
    model: str = Field(min_length=1)
    input: Any = None
    questions: Any = None
    ttl: float | None = Field(None, gt=0)  # LM Studio's: idle seconds before a model this request loads unloads


class SystemOneBody(Body):
    model: str = Field(min_length=1)
    state: Any = None
    questions: Any = None
    instructions: Any = None
    ttl: float | None = Field(None, gt=0)


def _service(request: Request) -> DecisionService:
    return request.app.state.decisions


async def _decide(request: Request, decision: DecisionRequest) -> Decisions | Response:
    try:
        return await until_disconnected(request, _service(request).decide(decision))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)


@router.post("/decisions")
async def decisions(body: DecisionsBody, request: Request):
    need(body.input, (str, list), "input", "a string or a list of items")
    messages = openai_wire.input_messages(body.input)
    questions = openai_wire.questions_of(body.questions)
    result = await _decide(request, DecisionRequest(body.model, messages, questions, "input", body.ttl))
    if isinstance(result, Response):
        return result
    return openai_wire.render(result, questions, body.questions)


@router.post("/systemone")
async def system_one(body: SystemOneBody, request: Request):
    systemone.check_no_files(body.model_dump())
    messages = systemone.state_messages(body.state, body.instructions)
    questions = systemone.questions_of(body.questions)
    result = await _decide(request, DecisionRequest(body.model, messages, questions, "state", body.ttl))
    if isinstance(result, Response):
        return result
    return systemone.render(result, questions, list(body.questions))
