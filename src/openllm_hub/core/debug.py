"""Whether the user asked to see everything: ``OPENLLM_HUB_DEBUG`` (the CLI's ``--debug`` sets it).

One definition for every place that hides library chatter (llama.cpp's log, transformers'
warnings and bars) or shortens tracebacks: the environment variable only, so a program that
imports the SDK is not switched by an unrelated ``--debug`` in its own command line.
"""

from __future__ import annotations

import os

#: The environment variable that turns debugging output on (any value but "", 0, false, no).
DEBUG_ENV = "OPENLLM_HUB_DEBUG"


def debug_enabled() -> bool:
    """``OPENLLM_HUB_DEBUG`` is set to something other than "", "0", "false" or "no"."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


__all__ = ["DEBUG_ENV", "debug_enabled"]
