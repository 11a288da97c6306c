"""Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``): wire schemas, their
translation to the chat service's requests, rendering, and routes."""
