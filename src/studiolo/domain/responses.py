"""Stored responses as every floor sees them: the response-id rule, the stored value, and the errors
about ids.

One rule for response ids, used by the store, the conversation service and both stateful API
families (OpenAI's ``/v1/responses`` and LM Studio's ``/api/v1/chat``): an id is ``"resp_"``
followed by 32 hex digits when studiolo makes it; any string with the prefix is a well-formed id
(it may name nothing), anything else is refused as malformed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from studiolo.domain.errors import InvalidRequest, NotFound

ID_PREFIX = "resp_"


class InvalidResponseId(InvalidRequest):
    code, param = "invalid_response_id", "previous_response_id"

    def __init__(self, response_id: object, param: str | None = None):
        super().__init__(f'invalid response id {response_id!r}: it must start with "{ID_PREFIX}"', param)
        self.response_id = response_id


class ResponseNotFound(NotFound):
    """No live response has this id (never stored, or deleted). ``message`` and ``param`` are for a
    caller that names the id differently (the Responses API's ``GET /v1/responses/{response_id}``)."""

    code, param = "response_not_found", "previous_response_id"

    def __init__(self, response_id: str, message: str | None = None, param: str | None = None):
        super().__init__(message or f"response not found: {response_id}", param)
        self.response_id = response_id


class PreviousResponseNotFound(InvalidRequest):
    """A turn continues a response that does not exist: OpenAI's Responses API calls that a wrong
    request (a 400), not a missing resource."""

    code, param = "previous_response_not_found", "previous_response_id"

    def __init__(self, response_id: str):
        super().__init__(f"Previous response with id '{response_id}' not found.")
        self.response_id = response_id


def new_response_id() -> str:
    return ID_PREFIX + secrets.token_hex(16)


def check_response_id(response_id: object, param: str | None = None) -> str:
    """``response_id`` if it is well formed, else InvalidResponseId about ``param`` (default:
    ``previous_response_id``, the field most ids arrive in)."""
    if not isinstance(response_id, str) or not response_id.startswith(ID_PREFIX):
        raise InvalidResponseId(response_id, param)
    return response_id


@dataclass(frozen=True)
class StoredResponse:
    id: str
    model: str
    created_at: float  # unix seconds
    previous_response_id: str | None
    input_items: list[dict[str, Any]]  # the items this turn added, not the history
    output_items: list[dict[str, Any]]
    usage: dict[str, Any]
    status: str  # "completed", "incomplete", "failed", ...
    instructions: str | None
    metadata: dict[str, Any]
    # the public id of the API token that stored it (domain/auth.py); None when stored without auth.
    # With auth on, a response is visible to its owner's token only
    owner: str | None = None
