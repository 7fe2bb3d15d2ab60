"""Shared engines that several plugins run on (e.g. llama.cpp for every GGUF architecture).

A family plugin keeps what is its own (detection, converters, tokenization rules, chat
defaults) and hands the running to an engine here, so no engine is copied into two plugins.
Each engine module imports its library lazily, inside the functions that need it: importing
``openllm_hub`` or a plugin that names an engine stays light. The torch building blocks
(``torch_quant``: nn.Module layers) import torch at module level and are imported only by code
that already runs torch. The core does not depend on
the engines' libraries; a plugin that uses an engine declares its library.
"""
