"""The ChatGLM networks, written for this package (no code from a checkpoint is run)."""

from __future__ import annotations

import torch

from openllm_hub_chatglm.network.common import GLMNetwork, QuantPlan
from openllm_hub_chatglm.spec import GLMSpec


def build_network(spec: GLMSpec, dtype: torch.dtype, plan: QuantPlan, device: torch.device) -> GLMNetwork:
    """An empty network of ``spec``'s version; fill it with :meth:`GLMNetwork.load_tensors`."""
    if spec.version == 1:
        from openllm_hub_chatglm.network.glm1 import GLM1Network

        return GLM1Network(spec, dtype, plan, device)
    from openllm_hub_chatglm.network.glm2 import GLM2Network

    return GLM2Network(spec, dtype, plan, device)


__all__ = ["GLMNetwork", "QuantPlan", "build_network"]
