"""openllm_hub plugin for LLaMA-family models (LLaMA 1/2, Alpaca, Chinese-LLaMA/Alpaca, BELLE, Vicuna)."""
