"""One debug switch: ``OPENLLM_HUB_DEBUG`` decides, for llama.cpp's log and transformers' chatter alike."""

from __future__ import annotations

import logging
import sys

import pytest

from openllm_hub.core.debug import debug_enabled
from openllm_hub.engines import hf_quiet, llama_cpp


@pytest.mark.parametrize(("value", "on"), [("", False), ("0", False), ("false", False), (" No ", False),
                                           ("1", True), ("yes", True)])
def test_the_variable_decides(monkeypatch: pytest.MonkeyPatch, value: str, on: bool) -> None:
    monkeypatch.setenv("OPENLLM_HUB_DEBUG", value)
    assert debug_enabled() is on
    assert hf_quiet.debug_enabled is debug_enabled and llama_cpp.debug_enabled is debug_enabled


def test_a_programs_own_debug_flag_is_not_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    """A script that imports the SDK and takes its own ``--debug`` keeps the SDK quiet."""
    monkeypatch.delenv("OPENLLM_HUB_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["my_script.py", "--debug"])
    assert not debug_enabled()
    with hf_quiet.hf_quiet():
        assert logging.getLogger("transformers").level == logging.ERROR
