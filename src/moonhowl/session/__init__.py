"""Streaming sessions: one per launch, each with its own keys, pipeline and sockets."""
