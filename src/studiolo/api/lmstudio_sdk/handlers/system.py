"""The ``system`` namespace: the server's version, and the models on disk."""

from __future__ import annotations

from typing import Any

from studiolo import __version__
from studiolo.api.lmstudio_sdk.endpoints import Call, namespace

system = namespace("system")


@system.rpc("version")
async def version(call: Call, parameter: Any) -> dict[str, Any]:
    # the SDKs compare the build with their own only to warn; studiolo reports its own version
    return {"version": __version__, "build": 0}
