"""openllm_hub plugin for ChatGLM-6B (v1), ChatGLM2-6B and ChatGLM3-6B.

Runs HuggingFace-layout ChatGLM checkpoints on this package's own torch implementation:
nothing shipped in a checkpoint folder is ever executed.
"""

__version__ = "0.1.0"
