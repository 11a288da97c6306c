"""LM Studio's REST API: v0, v1 (model management, stateful chat) and downloads."""
