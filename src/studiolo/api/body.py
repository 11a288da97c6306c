"""The one base of every request body (pydantic), whatever the API family.

Unknown fields are accepted and ignored: clients of every family send fields of their own
(``user``, ``metadata``, LM Studio's extras, ...). JSON has no NaN or Infinity, but Python's
parser takes them: a number field refuses them here, rather than letting them reach sampling.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Body(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
