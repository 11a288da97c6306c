"""Rerank routes (``/v1/rerank``, ``/rerank``, ``/v2/rerank``) in the shape llama-server, vLLM, Jina and
Cohere share."""
