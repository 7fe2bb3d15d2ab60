"""An example third-party plugin for openllm_hub: a byte-level bigram language model.

Small enough to read in one sitting, real enough to pass the conformance kit: it trains
from text, saves to safetensors, is detected by content, and generates through the core's
shared sampling loop.
"""

from pathlib import Path

#: The model shipped with the plugin (trained by ``python -m openllm_hub_bigram.train``).
BUILTIN_MODEL = Path(__file__).parent / "data" / "stories.bigram.safetensors"
