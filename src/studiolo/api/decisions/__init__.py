"""Decision endpoints: OpenAI's ``POST /v1/decisions`` and TypeSafe's ``POST /v1/systemone``
(service/decisions.py answers them on any chat model)."""
