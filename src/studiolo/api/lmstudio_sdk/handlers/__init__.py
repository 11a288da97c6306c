"""The namespaces' endpoints; importing this package joins them to the registry (endpoints.py)."""

import studiolo.api.lmstudio_sdk.handlers.embedding  # noqa: F401
import studiolo.api.lmstudio_sdk.handlers.files  # noqa: F401
from studiolo.api.lmstudio_sdk.handlers import models as model_endpoints  # noqa: F401
from studiolo.api.lmstudio_sdk.handlers import (  # noqa: F401
    predict,
    prompt_rpcs,
    system,  # noqa: F401
)
