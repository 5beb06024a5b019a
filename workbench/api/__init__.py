"""The OpenAI-compatible HTTP API (imports fastapi: only webui.py and tests import it)."""
