"""Load options of the ``glm130b`` family (device options dtype/threads are the core's).

Its own module so the loader and the launcher read them without importing the plugin module.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class GLMOptions(BaseModel):
    """Load options of the glm130b family (device options dtype/threads are the core's)."""

    model_config = ConfigDict(extra="forbid")

    quantize: Literal["int8", "int4"] | None = Field(None, description="quantize the linear layers while loading")
    offload_layers: list[int] | Literal["all"] | None = Field(
        None, description="layers whose weights stay in CPU memory and move to the device per step")
    tokenizer: str | None = Field(None, description="a sentencepiece .model replacing the config's tokenizer")
    check_memory: bool = Field(True, description="refuse early (with the planner's numbers) when it will not fit")
    nproc: int = Field(1, ge=1, le=4096, description=(
        "tensor-parallel ranks on this machine (as glm130b-run --nproc): rank 0 runs in this process, N-1 "
        "follower processes are started (one GPU each on CUDA, NCCL; gloo on CPU, where the CPU threads are "
        "divided among the ranks) and stopped by Model.close()"))


__all__ = ["GLMOptions"]
