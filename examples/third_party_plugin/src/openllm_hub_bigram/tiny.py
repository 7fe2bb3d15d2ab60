"""``openllm-hub tiny bigram OUT``: a small bigram table trained on a few generated stories.

The writer imports numpy when it runs, so registering the family stays light.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from openllm_hub.plugin import int_option

#: What ``openllm-hub tiny bigram`` writes and its ``-o`` options.
TINY_FORMATS = ("bigram",)
TINY_OPTIONS = {"seed": "seed of the generated stories (default 0)",
                "stories": "stories to count bigrams over (default 200)"}


def write_tiny(dst: Path, fmt: str, options: Mapping[str, Any]) -> Path:
    """Write a bigram model (one safetensors file) trained on ``stories`` generated stories."""
    from openllm_hub_bigram.engine_numpy import save, train
    from openllm_hub_bigram.train import corpus

    save(train(corpus(int_option(options, "stories", 200, minimum=1), seed=int_option(options, "seed", 0))), dst)
    return dst
