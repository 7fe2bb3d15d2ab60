"""The second engine: transformers' ``RwkvForCausalLM`` (RWKV-4 only).

Runs transformers folders (format ``hf``) and, with ``engine='transformers'``, RWKV-4 ``.pth``
files renamed in memory (:mod:`openllm_hub_rwkv.convert_hf`). Generation is the core loop over
the RNN state that transformers returns with ``use_cache=True``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openllm_hub.engines.finite import check_finite
from openllm_hub.engines.hf_folder import HFFolder
from openllm_hub.engines.hf_quiet import hf_quiet
from openllm_hub.plugin import (
    CorruptFileError,
    GenerationConfig,
    IncompatibleDeviceError,
    InvalidParameterError,
    LoadRequest,
    ModelInfo,
    generate_tokens,
    get_template,
    load_torch_checkpoint,
    read_json,
)
from openllm_hub_rwkv.checkpoint import read_pth_index
from openllm_hub_rwkv.options import RwkvOptions
from openllm_hub_rwkv.spec import analyse
from openllm_hub_rwkv.tokenizer import END_OF_TEXT, RwkvTextModel, RwkvTokenizer, choose_tokenizer

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt
    import torch

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class TransformersRwkvModel(RwkvTextModel):
    """RWKV-4 on transformers, with the same tokenizers and chat templates as the rwkv engine."""

    def __init__(self, info: ModelInfo, *, model: Any, tokenizer: RwkvTokenizer, options: RwkvOptions,
                 device: str) -> None:
        super().__init__(info, eos_token_ids=(END_OF_TEXT,))
        from openllm_hub_rwkv.engine_rwkv import default_template

        self.tokenizer = tokenizer
        self.options = options
        self.default_chat_template = options.chat_template or default_template(tokenizer)
        self._model = model
        self._device = device

    def _run_model(self, ids: Sequence[int], state: list[torch.Tensor] | None) -> tuple[torch.Tensor, Any]:
        import torch

        with torch.no_grad():
            x = torch.tensor([list(ids)], dtype=torch.long, device=self._device)
            out = self._model(input_ids=x, state=state, use_cache=True)
        return out.logits[0].float().cpu(), out.state

    def _logits(self, ids: list[int]) -> npt.NDArray[np.float32]:
        import torch

        rows, state = [], None
        chunk = self.options.chunk_len
        for start in range(0, len(ids), chunk):
            logits, state = self._run_model(ids[start : start + chunk], state)
            rows.append(logits)
        return torch.cat(rows).numpy()

    def _hidden_states(self, ids: list[int]) -> npt.NDArray[np.float32]:
        """``RwkvModel``'s ``last_hidden_state`` (the output of the final layer norm ``ln_out``,
        what the head reads) at every position, read in chunks of ``chunk_len`` with the RNN
        state carried over, as :meth:`_logits` reads."""
        import torch

        rows, state = [], None
        with torch.no_grad():
            for start in range(0, len(ids), self.options.chunk_len):
                x = torch.tensor([ids[start : start + self.options.chunk_len]], dtype=torch.long, device=self._device)
                out = self._model.rwkv(input_ids=x, state=state, use_cache=True)
                rows.append(out.last_hidden_state[0].float().cpu())
                state = out.state
        return torch.cat(rows).numpy()

    def _token_stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[int]:
        box: dict[str, Any] = {}

        def step(new_ids: Sequence[int]) -> npt.NDArray[np.float32]:
            logits, box["state"] = self._run_model(new_ids, box.get("state"))
            return logits[-1].numpy()

        return generate_tokens(step, prompt_ids, config, prompt_chunk=self.options.chunk_len)

    def _close(self) -> None:
        self._model = None


def _device_and_dtype(req: LoadRequest[RwkvOptions]) -> tuple[str, str]:
    p = req.placement
    if p.kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise IncompatibleDeviceError("torch sees no CUDA GPU", where="device", fix="use device='cpu'")
        return f"cuda:{(p.gpu_ids or (0,))[0]}", p.dtype
    return "cpu", p.dtype


def load_transformers(req: LoadRequest[RwkvOptions]) -> TransformersRwkvModel:
    """Load an HF folder, or an RWKV-4 ``.pth`` converted in memory, on transformers."""
    import torch
    from transformers import RwkvConfig, RwkvForCausalLM

    from openllm_hub_rwkv.convert_hf import hf_config, pth_state_to_hf

    opts = req.options
    if opts.strategy is not None or opts.int8 or opts.stream:
        raise InvalidParameterError("strategy/int8/stream are rwkv-engine options", where="engine=transformers",
                                    fix="use device=/dtype= with the transformers engine")
    device, dtype = _device_and_dtype(req)
    torch_dtype = getattr(torch, _DTYPES[dtype])
    path = Path(req.path)
    model: Any
    if req.format == "hf":
        cfg = read_json(path / "config.json")
        vocab = cfg.get("vocab_size") if isinstance(cfg, dict) else None
        if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab <= 0:
            raise CorruptFileError(f"config.json: 'vocab_size' must be a positive integer, got {vocab!r}",
                                   where=path / "config.json", fix="restore config.json from the model's source")
        HFFolder(path)  # index, shards and safetensors headers checked before transformers reads them
        try:
            with hf_quiet():
                loaded: Any = RwkvForCausalLM.from_pretrained(str(path), dtype=torch_dtype, local_files_only=True,
                                                  output_loading_info=True)
            model, loading = loaded
        except Exception as exc:  # the library's errors at the load boundary
            raise CorruptFileError(f"transformers cannot load this RWKV folder: {type(exc).__name__}: {exc}",
                                   where=path, fix="check that the folder holds a complete RWKV checkpoint") from exc
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            keys = sorted(str(k) for k in loading.get(kind) or ())
            if keys:  # missing ones would run as random numbers
                raise CorruptFileError(f"the weights do not match config.json: {kind.replace('_', ' ')} {keys[:3]}",
                                       where=path, fix="use the config.json that belongs to these weights, or "
                                                       "download the complete checkpoint")
        parameters = sum(p.numel() for p in model.parameters())
        version = "4"
    else:
        index = read_pth_index(path)
        arch = analyse(index.tensors, where=path, extras=index.extras)
        if arch.version != "4":
            raise InvalidParameterError(f"transformers runs RWKV-4 only; this is RWKV-{arch.version}", where=path,
                                        fix="use engine='rwkv' (the default)")
        sd = pth_state_to_hf(load_torch_checkpoint(path))
        # clone: transformers rescales weights in place; never write into a memory-mapped file
        sd = {k: v.to(torch_dtype).clone() for k, v in sd.items()}
        with hf_quiet():
            config = RwkvConfig.from_dict(hf_config(arch, context_length=1024, dtype=_DTYPES[dtype]))
            with torch.device("meta"):
                model = RwkvForCausalLM(config)
        try:
            model.load_state_dict(sd, strict=True, assign=True)
        except RuntimeError as exc:
            raise CorruptFileError(f"the checkpoint does not fit an RWKV-4 of its own dimensions: {exc}", where=path,
                                   fix="check that the file is a complete RWKV checkpoint") from exc
        vocab, parameters, version = arch.vocab_size, arch.parameters, arch.version
    for name, tensor in model.state_dict().items():  # NaN/Inf weights would only show as NaN logits
        check_finite(name, tensor, path)
    model.eval()
    model.to(device)
    tokenizer = choose_tokenizer(opts.tokenizer, vocab, path)
    if opts.chat_template is not None:
        get_template(opts.chat_template)
    info = ModelInfo(family="rwkv", format=req.format, engine="transformers", path=str(path), device=device,
                     parameters=parameters, context_length=None, vocab_size=vocab, dtype=dtype,
                     extra={"rwkv_version": version, "tokenizer": tokenizer.name,
                            "rescale_every": int(model.config.rescale_every)})
    return TransformersRwkvModel(info, model=model, tokenizer=tokenizer, options=opts, device=device)
