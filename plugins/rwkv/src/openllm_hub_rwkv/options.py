"""Load options of the ``rwkv`` family (device options dtype/gpu_layers/threads are the core's)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RwkvOptions(BaseModel):
    """What ``load(path, **options)`` accepts for RWKV models; unknown names are rejected."""

    model_config = ConfigDict(extra="forbid")

    engine: Literal["auto", "rwkv", "transformers"] = Field(
        "auto", description="auto: the rwkv package for .pth files, transformers for HF folders; "
                            "transformers also runs RWKV-4 .pth files (converted in memory)")
    strategy: str | None = Field(None, description="raw rwkv strategy string, e.g. 'cuda fp16 *10 -> cpu fp32' "
                                                   "(overrides device/dtype/gpu_layers/int8/stream)")
    int8: bool = Field(False, description="int8 weights (strategy suffix i8), about half the memory")
    stream: bool = Field(False, description="keep gpu_layers layers on the GPU and stream the rest from CPU memory")
    tokenizer: str = Field("auto", description="auto | world | path to a tokenizers JSON (e.g. 20B_tokenizer.json)")
    chat_template: str | None = Field(None, description="default chat template (rwkv-world or rwkv-raven by tokenizer)")
    chunk_len: int = Field(256, ge=1, le=65536, description="prompt tokens per forward call (ChatRWKV's CHUNK_LEN)")
    repeat_mode: Literal["rwkv", "ctrl"] = Field(
        "rwkv", description="rwkv: ChatRWKV presence/frequency penalties with decay mapped from repeat_penalty; "
                            "ctrl: the core's CTRL penalty")
    alpha_presence: float | None = Field(None, description="ChatRWKV presence penalty (default ln(repeat_penalty))")
    alpha_frequency: float | None = Field(None, description="ChatRWKV frequency penalty (default ln(repeat_penalty))")
    alpha_decay: float = Field(0.996, gt=0.0, le=1.0, description="per-token decay of the penalty counts")
    jit: bool = Field(True, description="TorchScript (RWKV_JIT_ON); RWKV-7 always uses it")
    cuda_kernels: bool = Field(False, description="compile rwkv's CUDA kernels (RWKV_CUDA_ON); one choice per process")
    state_cache: int = Field(8, ge=0, le=1024, description="chat states kept for reuse (0 = always re-read)")
