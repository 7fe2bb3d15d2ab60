"""The ChatGLM networks, written for this package (no code from a checkpoint is run)."""

from __future__ import annotations

import torch

from openllm_hub_chatglm.network.common import CheckpointLayout, GLMNetwork, QuantPlan
from openllm_hub_chatglm.spec import GLMSpec


def network_class(spec: GLMSpec) -> type[GLMNetwork]:
    """The network of ``spec``'s version."""
    if spec.version == 1:
        from openllm_hub_chatglm.network.glm1 import GLM1Network

        return GLM1Network
    from openllm_hub_chatglm.network.glm2 import GLM2Network

    return GLM2Network


def build_network(spec: GLMSpec, dtype: torch.dtype, plan: QuantPlan, device: torch.device) -> GLMNetwork:
    """An empty network of ``spec``'s version; fill it with :meth:`GLMNetwork.load_tensors`."""
    return network_class(spec)(spec, dtype, plan, device)


def checkpoint_layout(spec: GLMSpec, dtype: torch.dtype, plan: QuantPlan) -> CheckpointLayout:
    """The tensors (names, stored shapes) a checkpoint for ``spec`` must hold, loaded with
    ``plan``: the :meth:`GLMNetwork.checkpoint_layout` of the network built on the meta device,
    which allocates no memory, so the layout is the network's own and the check of a
    checkpoint's headers against it can run before the real network is built."""
    return network_class(spec)(spec, dtype, plan, torch.device("meta")).checkpoint_layout()


__all__ = ["CheckpointLayout", "GLMNetwork", "QuantPlan", "build_network", "checkpoint_layout", "network_class"]
