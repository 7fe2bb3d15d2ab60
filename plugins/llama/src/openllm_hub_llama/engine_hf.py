"""Transformers engine: HuggingFace LLaMA folders on torch (``LlamaForCausalLM``).

Weights load with ``local_files_only`` and ``weights_only`` (no network, no code from the
checkpoint, never ``trust_remote_code``); grouped-query attention, tied embeddings and rope
settings come from ``config.json`` through transformers. Tokens come from the folder's
``tokenizer.model`` through sentencepiece, which is what the GGUF side reproduces, so both
engines give the same ids for the same text. Generation is the core's KV-cache loop
(:func:`openllm_hub.core.generate.generate_tokens`) over a ``DynamicCache``. Several
sequences decode in one forward pass per step (:class:`HFBatchDecoder`: rows of one
left-padded ``DynamicCache``, with a padding mask and per-row position ids, within a memory
budget). Prompts sharing a prefix (a system prompt, a chat history) reuse its keys and values
from the model's :attr:`HFModel.prefix_cache` (load option ``prefix_cache_mib``; see
:mod:`openllm_hub.engines.torch_prefix`), on the single path and in the batched decoder.

Before transformers sees the folder, ``config.json`` is validated (bounded numbers) and the
stored tensors are checked against it (:func:`openllm_hub_llama.checkpoint.check_hf_folder`):
transformers would otherwise run a missing tensor as random numbers. After loading, a NaN or
Inf weight is refused by name; library warnings and bars stay off stderr unless ``--debug``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openllm_hub.engines.finite import check_finite
from openllm_hub.engines.hf_folder import read_chat_template
from openllm_hub.engines.hf_quiet import hf_quiet
from openllm_hub.engines.prefix_cache import PrefixCache, default_prefix_cache_mib
from openllm_hub.engines.torch_batch import RowBatchDecoder, kv_budget_bytes
from openllm_hub.engines.torch_prefix import KVLayers, lookup_kv, read_prompt, remembering
from openllm_hub.plugin import (
    CorruptFileError,
    GenerationConfig,
    LoadRequest,
    Model,
    ModelInfo,
    NotFoundError,
    OpenLLMHubError,
    UnsafeCheckpointError,
    generate_tokens,
    join_pieces,
    read_json,
)
from openllm_hub_llama.checkpoint import check_hf_folder, window_context

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt
    import torch

    from openllm_hub_llama.options import LlamaOptions

logger = logging.getLogger("openllm_hub")
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class SentencePieceTokenizer:
    """The folder's ``tokenizer.model`` with the BOS/EOS policy of ``tokenizer_config.json``."""

    def __init__(self, folder: Path) -> None:
        import sentencepiece as spm

        path = folder / "tokenizer.model"
        if not path.is_file():
            raise NotFoundError("tokenizer.model is missing", where=folder,
                                fix="copy the model's sentencepiece tokenizer.model into the folder")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as exc:
            raise CorruptFileError(f"cannot read the sentencepiece model: {exc}", where=path) from exc
        cfg = _read_json(folder / "tokenizer_config.json") or {}
        self.add_bos = bool(cfg.get("add_bos_token", True))
        self.add_eos = bool(cfg.get("add_eos_token", False))
        self.size = int(self.sp.get_piece_size())
        self._pieces: dict[int, tuple[bytes, bool]] = {}

    def encode(self, text: str, add_special: bool) -> list[int]:
        ids: list[int] = list(self.sp.encode(text))
        if add_special:
            if self.add_bos and self.sp.bos_id() >= 0:
                ids.insert(0, self.sp.bos_id())
            if self.add_eos and self.sp.eos_id() >= 0:
                ids.append(self.sp.eos_id())
        return ids

    def specials(self) -> dict[str, int]:
        """The control pieces (``<s>``, ``</s>``, ...), spelling -> id; sentencepiece never
        produces them from text, so ``encode(text, False)`` is plain-text tokenization."""
        return {self.sp.id_to_piece(i): i for i in range(self.size) if self.sp.is_control(i)}

    def _piece(self, token: int) -> tuple[bytes, bool]:
        piece = self._pieces.get(token)
        if piece is None:
            sp = self.sp
            if not 0 <= token < self.size or sp.IsControl(token) or sp.IsUnknown(token) or sp.IsUnused(token):
                # special tokens, and ids past the vocabulary (added tokens such as <pad>), are skipped
                piece = (b"", False)
            elif sp.IsByte(token):
                piece = (bytes([int(sp.IdToPiece(token)[3:5], 16)]), False)  # "<0xAB>"
            else:
                piece = (sp.IdToPiece(token).replace("\u2581", " ").encode("utf-8"), True)
            self._pieces[token] = piece
        return piece

    def decode(self, ids: Sequence[int]) -> str:
        """sentencepiece's pieces joined by :func:`~openllm_hub.core.detok.join_pieces`: what
        ``sp.decode`` gives, without special tokens and with Python's U+FFFD policy."""
        return join_pieces(self._piece(int(i)) for i in ids)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    data = read_json(path)
    return data if isinstance(data, dict) else None


def _own_chat_template(folder: Path, tok: SentencePieceTokenizer) -> tuple[str | None, dict[str, str]]:
    """The folder's Jinja chat template and the special-token strings it sees (the config's,
    else sentencepiece's BOS/EOS/UNK/PAD pieces): :func:`openllm_hub.engines.hf_folder.read_chat_template`."""
    pieces = {kind: tok.sp.id_to_piece(sp_id)
              for kind, sp_id in (("bos", tok.sp.bos_id()), ("eos", tok.sp.eos_id()), ("unk", tok.sp.unk_id()),
                                  ("pad", tok.sp.pad_id())) if 0 <= sp_id < tok.size}
    return read_chat_template(folder, pieces)


def _eos_ids(folder: Path, tok: SentencePieceTokenizer, config: Any) -> set[int]:
    ids: set[int] = set()
    for value in (config.eos_token_id, (_read_json(folder / "generation_config.json") or {}).get("eos_token_id")):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    if tok.sp.eos_id() >= 0:
        ids.add(tok.sp.eos_id())
    return ids


def _dynamic_layers(cache: Any) -> KVLayers:
    """A batch-1 ``DynamicCache``'s keys and values, one pair per layer."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def _load_dynamic(cache: Any, layers: KVLayers, devices: Sequence[torch.device]) -> None:
    """Put a stored prefix (host tensors) into an empty ``DynamicCache``, each layer on its device."""
    for i, ((k, v), dev) in enumerate(zip(layers, devices, strict=True)):
        cache.update(k.to(dev), v.to(dev), i)


class HFModel(Model):
    """A LLaMA checkpoint on transformers/torch.

    :attr:`prefix_cache` keeps the keys and values of read prompts for prompts sharing their
    prefix (sized by ``prefix_cache_mib``; :mod:`openllm_hub.engines.torch_prefix`);
    :attr:`batch_kv_bytes` bounds the batched decoder's KV cache (None: half the free memory).
    """

    #: the most bytes the batched decoder's KV cache may take, all rows together (None: half the
    #: free memory of the model's device when a decoder is made)
    batch_kv_bytes: int | None = None

    def __init__(self, model: Any, tok: SentencePieceTokenizer, info: ModelInfo, *, eos_token_ids: Sequence[int],
                 device: torch.device, default_template: str | None, seed: int | None,
                 own_template: tuple[str | None, dict[str, str]] = (None, {})) -> None:
        super().__init__(info, eos_token_ids=eos_token_ids)
        self._set_model_chat_template(*own_template)  # the folder's Jinja template, unless the caller names one
        self._model = model
        self._tok = tok
        self._specials: dict[str, int] | None = None
        self._device = device
        # transformers 5 renamed forward()'s ``past_key_values`` to ``cache``
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        if default_template:
            self.default_chat_template = default_template
        if seed is not None:
            self.generation_defaults = GenerationConfig(seed=seed)
        #: keys and values of read prompts, for prompts sharing their prefix (load_hf sizes it)
        self.prefix_cache = PrefixCache(0)
        #: where each decoder layer's keys and values live (one device, or several with a device map)
        self._kv_devices = [layer.self_attn.k_proj.weight.device for layer in model.model.layers]

    @property
    def torch_model(self) -> Any:
        """The underlying ``LlamaForCausalLM``."""
        self._check_open()
        return self._model

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        return self._tok.encode(text, add_special)

    def _special_tokens(self) -> dict[str, int]:
        if self._specials is None:
            self._specials = self._tok.specials()
        return self._specials

    def _special_token_id(self, name: str) -> int | None:  # one lookup, not the whole vocabulary
        sp = self._tok.sp
        pid = int(sp.piece_to_id(name))
        return pid if 0 <= pid < self._tok.size and sp.is_control(pid) and sp.id_to_piece(pid) == name else None

    def _detokenize(self, ids: Sequence[int]) -> str:
        return self._tok.decode(ids)

    def _token_stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[int]:
        import torch
        from transformers import DynamicCache

        cache = DynamicCache(config=self._model.config)
        model = self._model
        device = self._device
        cache_kw = self._cache_kw

        def step(new_ids: Sequence[int]) -> npt.NDArray[np.float32]:
            with torch.inference_mode():
                x = torch.tensor([list(new_ids)], dtype=torch.long, device=device)
                out = model(input_ids=x, use_cache=True, logits_to_keep=1, **{cache_kw: cache})
                result: npt.NDArray[np.float32] = out.logits[0, -1].float().cpu().numpy()
                return result

        # the longest stored prefix of the prompt goes into the cache; only the rest is read
        cached, prefix = lookup_kv(self.prefix_cache, prompt_ids)
        if cached:
            with torch.inference_mode():
                _load_dynamic(cache, prefix, self._kv_devices)
        run = remembering(self.prefix_cache, prompt_ids, step, length=cache.get_seq_length,
                          layers=lambda: _dynamic_layers(cache))
        yield from generate_tokens(run, prompt_ids, config, context_length=self.info.context_length, cached=cached)

    def _batch_decoder(self, slots: int) -> HFBatchDecoder:
        return HFBatchDecoder(self, slots=slots)

    def _logits(self, ids: list[int]) -> npt.NDArray[np.float32]:
        import torch

        with torch.inference_mode():
            x = torch.tensor([ids], dtype=torch.long, device=self._device)
            out = self._model(input_ids=x, use_cache=False)
            result: npt.NDArray[np.float32] = out.logits[0].float().cpu().numpy()
            return result

    def _token_bytes(self, token_id: int) -> bytes:
        # the sentencepiece piece's bytes ("▁" a space, "<0xAB>" that byte), as llama.cpp's pieces
        return self._tok._piece(token_id)[0]

    def _hidden_states(self, ids: list[int]) -> npt.NDArray[np.float32]:
        """The decoder's (``LlamaModel``'s) last hidden states, after the final RMSNorm, of one
        forward pass over ``ids``; :meth:`Model.embed` mean-pools them."""
        import torch

        with torch.inference_mode():
            x = torch.tensor([ids], dtype=torch.long, device=self._device)
            out = self._model.model(input_ids=x, use_cache=False)
            result: npt.NDArray[np.float32] = out.last_hidden_state[0].float().cpu().numpy()
            return result

    def _close(self) -> None:
        self._model = None
        self.prefix_cache.clear()
        if self._device.type == "cuda":
            import torch

            torch.cuda.empty_cache()


class HFBatchDecoder(RowBatchDecoder):
    """Several sequences of an :class:`HFModel` in one forward pass per step (the shared
    :class:`~openllm_hub.engines.torch_batch.RowBatchDecoder`, whose doc says where results
    may differ from a single run).

    A joining prompt is read alone in the single path's chunks (512 ids) into its own
    ``DynamicCache``, after the longest prefix the model's prefix cache holds of it (as the
    single path reads it); its layers then become a row of the batch's cache. Rows are
    **left-padded**: each row's tokens end at the cache's last column, so one decoding step
    appends one column for all rows, as transformers' own batched ``generate`` does. The step
    passes a 2D ``attention_mask`` (0 on each row's padding; omitted when no row is padded, so
    a lone row runs the single path's computation) and each row's ``position_ids`` (its own
    length), so rotary positions and attention are the row's own. A row that leaves is
    dropped, and columns that only padding holds are cut off. ``slots`` sequences of at most
    :attr:`slot_tokens` tokens fit the model's ``batch_kv_bytes`` (default: half the free memory;
    see :func:`~openllm_hub.engines.torch_batch.plan_rows`).
    """

    def __init__(self, model: HFModel, *, slots: int = 1, step_tokens: int = 512, keep_logits: bool = False) -> None:
        budget = model.batch_kv_bytes if model.batch_kv_bytes is not None else kv_budget_bytes(model.info.device)
        super().__init__(model.info.context_length, step_tokens=step_tokens, keep_logits=keep_logits, slots=slots,
                         kv_bytes_per_token=model.info.extra.get("kv_bytes_per_token"), kv_budget=budget)
        self.model = model
        self._cache: Any = None
        #: tokens each row holds (right-aligned in the cache's columns)
        self._lengths: list[int] = []

    def _width(self) -> int:
        return 0 if self._cache is None else int(self._cache.layers[0].keys.shape[2])

    def _prefill(self, prompt_ids: list[int]) -> tuple[Any, npt.NDArray[np.float32]]:
        import torch
        from transformers import DynamicCache

        model = self.model
        hf = model.torch_model
        cache = DynamicCache(config=hf.config)

        def forward(ids: Sequence[int]) -> npt.NDArray[np.float32]:
            x = torch.tensor([list(ids)], dtype=torch.long, device=model._device)
            out = hf(input_ids=x, use_cache=True, logits_to_keep=1, **{model._cache_kw: cache})
            row: npt.NDArray[np.float32] = out.logits[0, -1].float().cpu().numpy()
            return row

        with torch.inference_mode():  # in generate_tokens' prompt chunks (512), as the single path
            logits, _ = read_prompt(model.prefix_cache, prompt_ids, forward=forward,
                                    load=lambda prefix: _load_dynamic(cache, prefix, model._kv_devices),
                                    layers=lambda: _dynamic_layers(cache))
        return cache, logits

    def _merge(self, cache: Any, length: int) -> None:
        if self._cache is None:
            self._cache, self._lengths = cache, [length]
            return
        width = max(self._width(), length)
        for mine, new in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = _cat_left_padded(mine.keys, new.keys, width)
            mine.values = _cat_left_padded(mine.values, new.values, width)
        self._lengths.append(length)

    def _decode(self, tokens: list[int], positions: list[int]) -> npt.NDArray[np.float32]:
        import torch

        device = self.model._device
        width = self._width()
        mask = None
        if any(n != width for n in self._lengths):  # padding: each row attends to its own tokens only
            first = torch.tensor([width - n for n in self._lengths], device=device)[:, None]
            mask = (torch.arange(width + 1, device=device)[None, :] >= first).long()
        with torch.inference_mode():
            out = self.model.torch_model(
                input_ids=torch.tensor(tokens, dtype=torch.long, device=device)[:, None],
                position_ids=torch.tensor(positions, dtype=torch.long, device=device)[:, None],
                attention_mask=mask, use_cache=True, logits_to_keep=1, **{self.model._cache_kw: self._cache})
            rows: npt.NDArray[np.float32] = out.logits[:, -1].float().cpu().numpy()
        self._lengths = [n + 1 for n in self._lengths]
        return rows

    def _drop(self, index: int) -> None:
        import torch

        self._lengths.pop(index)
        if not self._lengths:
            self._cache = None
            return
        cut = self._width() - max(self._lengths)  # leading columns that now hold only padding
        for layer in self._cache.layers:
            keep = torch.tensor([i for i in range(layer.keys.shape[0]) if i != index], device=layer.keys.device)
            layer.keys = layer.keys.index_select(0, keep)[:, :, cut:]
            layer.values = layer.values.index_select(0, keep)[:, :, cut:]

    def close(self) -> None:
        super().close()
        self._cache = None


def _cat_left_padded(rows: torch.Tensor, new: torch.Tensor, width: int) -> torch.Tensor:
    """``rows`` and ``new`` (batch, heads, length, dim) stacked as rows of ``width`` columns,
    each left-padded with zeros (masked out by the attention mask)."""
    import torch
    import torch.nn.functional as F

    def pad(t: torch.Tensor) -> torch.Tensor:
        return t if t.shape[2] == width else F.pad(t, (0, 0, width - int(t.shape[2]), 0))

    return torch.cat([pad(rows), pad(new.to(rows.device))], dim=0)


def load_hf(req: LoadRequest[LlamaOptions]) -> HFModel:
    """Load an HF LLaMA folder with transformers on the request's placement."""
    import pickle

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(req.path)
    opts = req.options
    p = req.placement
    if not (folder / "config.json").is_file():
        raise NotFoundError("config.json is missing", where=folder)
    check_hf_folder(folder)  # config.json, index, shards, headers, tensors against the config
    tok = SentencePieceTokenizer(folder)
    try:
        with hf_quiet():
            config = LlamaConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # the library's parse errors
        raise CorruptFileError(f"cannot read config.json: {exc}", where=folder / "config.json",
                               fix="restore config.json from the model's source") from exc
    if tok.size > config.vocab_size:
        raise CorruptFileError(
            f"tokenizer.model has {tok.size} pieces but the embedding has {config.vocab_size} rows",
            where=folder, fix="use the tokenizer that belongs to these weights")
    if p.threads:
        torch.set_num_threads(p.threads)
    dtype = getattr(torch, TORCH_DTYPES[p.dtype])
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True, "trust_remote_code": False,
                              "weights_only": True}
    multi = p.kind == "cuda" and len(p.gpu_ids) > 1
    if multi:  # layers spread over the GPUs by free memory (accelerate's device map)
        kwargs["device_map"] = "auto"
        kwargs["max_memory"] = {i: f"{g}MiB" for i, g in _free_mib(p.gpu_ids).items()}
    elif p.kind == "cuda":  # straight onto the GPU, never a full copy in host memory
        kwargs["device_map"] = {"": f"cuda:{p.gpu_ids[0] if p.gpu_ids else 0}"}
    try:
        with hf_quiet():
            model: Any = LlamaForCausalLM.from_pretrained(folder, **kwargs)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError("refusing to load: the checkpoint needs code execution to unpickle",
                                    where=folder, fix="convert it to safetensors from a source you trust") from exc
    except OpenLLMHubError:
        raise
    except Exception as exc:  # safetensors/torch/transformers errors
        raise CorruptFileError(f"cannot load the weights: {type(exc).__name__}: {exc}", where=folder,
                               fix="check that every shard is complete") from exc
    for name, param in model.state_dict().items():  # NaN/Inf weights would only show as NaN logits
        check_finite(name, param, folder)
    model.eval()
    # a Mistral-style window: LlamaForCausalLM attends over the whole context, so the context
    # stops at the window (equal within it; there is no n_ctx on this engine to ask for more)
    trained = int(config.max_position_embeddings)
    window = getattr(config, "sliding_window", None)
    window = window if isinstance(window, int) and 0 < window < trained else None
    context, warning = window_context(window, None, trained, "the transformers engine (LlamaForCausalLM)",
                                      more="engine='llama.cpp' with n_ctx=N opens more, with full attention beyond "
                                           "the window")
    if warning is not None:
        logger.warning(warning)
    device = model.get_input_embeddings().weight.device
    n_params = sum(t.numel() for t in model.parameters())
    dev = ("cuda:" + ",".join(map(str, p.gpu_ids or (0,)))) if p.kind == "cuda" else "cpu"
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = config.num_key_value_heads or config.num_attention_heads
    kv_bytes_per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * dtype.itemsize
    cache_mib = opts.prefix_cache_mib if opts.prefix_cache_mib is not None else default_prefix_cache_mib()
    info = ModelInfo(
        family="llama", format="hf", engine="transformers", path=str(folder), device=dev, parameters=n_params,
        context_length=context, vocab_size=int(config.vocab_size), dtype=p.dtype,
        extra={"n_layers": config.num_hidden_layers, "n_heads": config.num_attention_heads,
               "n_kv_heads": config.num_key_value_heads, "tied_embeddings": bool(config.tie_word_embeddings),
               "rope_parameters": getattr(config, "rope_parameters", None),
               **({"sliding_window": window} if window is not None else {}),
               # one token's keys and values (the batched decoder's memory plan; serve's default --parallel)
               "kv_bytes_per_token": kv_bytes_per_token, "prefix_cache_mib": cache_mib,
               "torch": torch.__version__},
    )
    hf_model = HFModel(model, tok, info, eos_token_ids=sorted(_eos_ids(folder, tok, config)), device=device,
                       default_template=opts.chat_template, seed=opts.seed,
                       own_template=_own_chat_template(folder, tok))
    hf_model.prefix_cache = PrefixCache(cache_mib * 2**20)
    if opts.batch_kv_mib is not None:
        hf_model.batch_kv_bytes = opts.batch_kv_mib * 2**20
    return hf_model


def _free_mib(gpu_ids: Sequence[int]) -> dict[int, int]:
    from openllm_hub.plugin import probe_machine

    gpus = {g.index: g for g in probe_machine().gpus}
    return {i: max(gpus[i].free_mib - 1024, 0) if i in gpus else 0 for i in gpu_ids}


__all__ = ["HFBatchDecoder", "HFModel", "SentencePieceTokenizer", "load_hf"]
