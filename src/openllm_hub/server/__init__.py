"""An OpenAI-compatible HTTP server and an offline chat page for any model the SDK loads.

Optional: needs the ``server`` extra (``pip install openllm-hub[server]``: fastapi and
uvicorn), which only this package imports, and only when ``create_app`` is first used (so
``openllm_hub.server.cli`` can add the ``serve`` command without them). ``create_app(model)``
gives the ASGI app; ``openllm-hub serve MODEL`` runs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from openllm_hub.server.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from openllm_hub.server.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
