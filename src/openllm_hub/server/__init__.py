"""An OpenAI-compatible HTTP server and an offline chat page for any model the SDK loads.

Optional: needs the ``server`` extra (``pip install openllm-hub[server]``: fastapi and
uvicorn), which only this package imports. ``create_app(model)`` gives the ASGI app;
``openllm-hub serve MODEL`` runs it.
"""

from __future__ import annotations

from openllm_hub.server.app import create_app

__all__ = ["create_app"]
