"""OpenAI's Responses API: stateful turns over the conversation service."""
