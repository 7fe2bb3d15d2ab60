"""GLM-130B's own torch network: the transformer shard, tensor-parallel layers, positions, quantized weights."""
