"""The one base of every request body (pydantic), whatever the API family.

Unknown fields are accepted and ignored: clients of every family send fields of their own
(``user``, ``metadata``, LM Studio's extras, ...). JSON has no NaN or Infinity, but Python's
parser takes them: a number field refuses them here, rather than letting them reach sampling.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from studiolo.domain.sampling import SAMPLING_RANGES


class Body(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


def sampling_field(name: str, **narrower: float) -> Any:
    """An optional sampling value, bounded by the domain's one table of ranges (``SAMPLING_RANGES``);
    a family's own documentation may narrow a bound (``narrower``), never widen it."""
    bounds = {**SAMPLING_RANGES[name], **narrower}
    return Field(None, ge=bounds.get("ge"), gt=bounds.get("gt"), le=bounds.get("le"))
