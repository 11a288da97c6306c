"""studiolo: a local LLM server with OpenAI-compatible and LM Studio REST APIs."""

__version__ = "0.1.0"
