"""openllm_hub plugin for RWKV models (RWKV-4, 5.x, 6 and 7) on the ``rwkv`` package."""
