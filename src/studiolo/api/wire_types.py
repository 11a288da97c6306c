"""Field types shared by the wire schemas.

``Int``: pydantic's lax mode takes ``true`` as 1 for an ``int`` field, so ``"dimensions": true``
or a token id ``false`` would pass as numbers. OpenAI refuses booleans there, and so do we;
integral floats (``2.0``) and numeric strings stay accepted as pydantic accepts them.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator


def _refuse_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("Input should be a valid integer, not a boolean")
    return value


Int = Annotated[int, BeforeValidator(_refuse_bool)]
