"""LM Studio's SDK protocol: what its official SDKs (``lmstudio`` on PyPI, ``@lmstudio/sdk`` on npm)
speak instead of the REST API.

A client finds the server with ``GET /lmstudio-greeting`` (``{"lmstudio": true}``), then opens one
WebSocket per namespace (``/llm``, ``/embedding``, ``/system``, ``/files``, ...). Its first frame
authenticates (``authVersion``, ``clientIdentifier``, ``clientPasskey``); every later frame is a
JSON object with a ``type``: RPC calls answered by one result or error, and channels (a prediction,
a model load) that stream messages both ways until the server closes them.

    routes.py     the greeting and the WebSocket routes, one per namespace
    session.py    one socket: the handshake, reading frames, running calls and channels as tasks
    frames.py     the frames: checking what the client sends, building what the server sends
    endpoints.py  the registry the namespaces' handlers join, and what a handler is given
"""
