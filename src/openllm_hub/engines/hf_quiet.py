"""Silence transformers/peft/accelerate chatter around a library call, unless debugging.

Loading a checkpoint through transformers prints warnings (deprecations, generation-config
notes), a load report (missing/unexpected keys) and a "Loading weights" bar on stderr, in
front of the SDK's own one-line messages. Every call site that hands work to those libraries
(LLaMA's transformers engine, LoRA training and merging, RWKV's transformers engine) wraps it
in :func:`hf_quiet`, so stderr carries only what the SDK itself says. With ``OPENLLM_HUB_DEBUG``
set (the CLI's ``--debug`` sets it; :func:`openllm_hub.core.debug.debug_enabled`) nothing is
silenced. The SDK's own progress bars
(:mod:`openllm_hub.core.progress`) are not affected.

transformers is imported inside :func:`hf_quiet` only.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

from openllm_hub.core.debug import debug_enabled

#: the loggers of the libraries we call (their children inherit the level).
_LOGGERS = ("transformers", "peft", "accelerate", "huggingface_hub", "safetensors", "torch.distributed")


@contextlib.contextmanager
def hf_quiet() -> Iterator[None]:
    """Run the block with transformers/peft warnings, load reports and progress bars off.

    Under ``--debug`` the block runs untouched. Levels and filters are restored afterwards.
    """
    if debug_enabled():
        yield
        return
    hf_logging: Any = None
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging_module

        hf_logging = hf_logging_module
    saved = {name: logging.getLogger(name).level for name in _LOGGERS}
    was_verbosity = hf_logging.get_verbosity() if hf_logging is not None else None
    was_bar = hf_logging.is_progress_bar_enabled() if hf_logging is not None else None
    try:
        for name in _LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        if hf_logging is not None:
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        if hf_logging is not None:
            hf_logging.set_verbosity(was_verbosity)
            (hf_logging.enable_progress_bar if was_bar else hf_logging.disable_progress_bar)()


__all__ = ["debug_enabled", "hf_quiet"]
