"""Durable storage: stored responses for stateful chats."""
