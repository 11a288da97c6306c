"""OpenAI-compatible routes: chat completions, completions, the models list and embeddings."""
