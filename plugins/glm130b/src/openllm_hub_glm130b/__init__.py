"""openllm_hub plugin for GLM-130B: tensor parallelism on torch.distributed over SwissArmyTransformer
checkpoints, INT8/INT4 weight-only quantization, weight offload, beam search, blank filling, and its
memory description for the core's hardware planner (:mod:`openllm_hub_glm130b.memory`)."""

__version__ = "0.1.0"
