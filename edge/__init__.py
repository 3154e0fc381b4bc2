"""The Tollgate edge: an async sidecar in front of OpenAI-compatible model servers.

It imports no Django; it reads Redis and talks HTTP.
"""
