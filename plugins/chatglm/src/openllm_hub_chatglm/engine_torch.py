"""The ChatGLM engine: a :class:`Model` over this package's torch networks.

Loading reads config.json (variant and shapes) and the tokenizer, checks the names and shapes in
the weight files' headers against the network's layout (before the network is built), then reads
the weights shard by shard into the network, converting to the placement's dtype or quantizing on
the way.
Generation runs the core KV-cache loop; ChatGLM-6B feeds its prompt in one piece because
its prompt attends bidirectionally, and builds its 2D position ids as the reference does.
Several sequences decode in one forward pass per step (:class:`ChatGLMBatchDecoder`, rows of
one ragged KV cache within a memory budget; ChatGLM-6B with its 2D positions).

ChatGLM2/3 prompts sharing a prefix (a system prompt, a chat history) reuse its keys and values
from the model's :attr:`ChatGLMModel.prefix_cache` (load option ``prefix_cache_mib``; see
:mod:`openllm_hub.engines.torch_prefix`), on the single path and in the batched decoder.
ChatGLM-6B (v1) has none: its prompt ends with ``[gMASK] <sop>`` and every position before
``<sop>`` attends to the whole prompt (both ways), with the ``[gMASK]`` position in the 2D
positions of what follows, so the keys and values of a shared prefix depend on the rest of the
prompt and could not be reused exactly (``prefix_cache_mib`` is 0 for it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from openllm_hub.engines.finite import finite_tensors
from openllm_hub.engines.hf_folder import read_chat_template
from openllm_hub.engines.prefix_cache import PrefixCache, default_prefix_cache_mib
from openllm_hub.engines.torch_batch import RowBatchDecoder, kv_budget_bytes
from openllm_hub.engines.torch_prefix import KVLayers, Step, lookup_kv, read_prompt, remembering
from openllm_hub.engines.torch_quant import resident_bytes
from openllm_hub.plugin import (
    CorruptFileError,
    GenerationConfig,
    IncompatibleDeviceError,
    InvalidParameterError,
    Model,
    ModelInfo,
    NotFoundError,
    generate_tokens,
    read_json,
)
from openllm_hub_chatglm.checkpoint import iter_tensors, stored_tensors
from openllm_hub_chatglm.network import GLMNetwork, QuantPlan, build_network, checkpoint_layout
from openllm_hub_chatglm.network.glm1 import GLM1Network, position_ids
from openllm_hub_chatglm.network.glm2 import GLM2Network
from openllm_hub_chatglm.spec import GLMSpec, read_spec
from openllm_hub_chatglm.templates import CHAT_DEFAULTS
from openllm_hub_chatglm.tokenizer import ChatGLMTokenizer, load_tokenizer

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt

    from openllm_hub.engines.kv_cache import KVCache
    from openllm_hub.plugin import LoadRequest
    from openllm_hub_chatglm.options import ChatGLMOptions

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cache_layers(cache: KVCache) -> KVLayers:
    return [cache.keys_values(layer) for layer in range(cache.layers)]


class ChatGLMModel(Model):
    """A loaded ChatGLM checkpoint (v1, v2 or v3).

    :attr:`prefix_cache` keeps the keys and values of read prompts for prompts sharing their
    prefix (ChatGLM2/3; sized by ``prefix_cache_mib``); :attr:`batch_kv_bytes` bounds the batched
    decoder's KV cache (None: half the free memory).
    """

    #: the most bytes the batched decoder's KV cache may take, all rows together (None: half the
    #: free memory of the model's device when a decoder is made)
    batch_kv_bytes: int | None = None

    def __init__(self, info: ModelInfo, net: GLMNetwork, tokenizer: ChatGLMTokenizer, spec: GLMSpec,
                 context_length: int, chat_template: str) -> None:
        eos = set(tokenizer.eos_ids)
        if spec.eos_token_id is not None and spec.version > 1:
            eos.add(spec.eos_token_id)
        super().__init__(info, eos_token_ids=eos)
        self.net, self.tokenizer, self.spec = net, tokenizer, spec
        self.context_length = context_length
        self.default_chat_template = chat_template
        self.generation_defaults = CHAT_DEFAULTS[spec.variant]
        #: keys and values of read prompts, for prompts sharing their prefix (load_chatglm sizes it;
        #: always off for ChatGLM-6B, see the module doc)
        self.prefix_cache = PrefixCache(0)

    # ---- engine methods ----------------------------------------------------------------
    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        return self.tokenizer.encode(text, add_special)

    def _plain_ids(self, text: str) -> list[int]:  # chat message text: no v3 role parsing, no v1 specials
        return self.tokenizer.encode_plain(text)

    def _special_tokens(self) -> dict[str, int]:
        return self.tokenizer.specials

    def _detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def _positions(self, prompt: list[int], start: int, count: int, total: int | None = None) -> dict[str, Any]:
        if self.spec.version != 1:
            return {}
        pos, block, ctx = position_ids(prompt, self.spec, total)
        dev = self.net.device
        return {"position_ids": torch.tensor(pos[start:start + count], device=dev),
                "block_position_ids": torch.tensor(block[start:start + count], device=dev), "context_length": ctx}

    def _token_stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[int]:
        prompt = list(prompt_ids)
        cache = self.net.new_cache(self.context_length)
        seq: list[int] = list(prompt)

        def step(new_ids: Sequence[int]) -> npt.NDArray[np.float32]:
            start = cache.length
            if start >= len(prompt):
                seq.extend(new_ids)
            ids = torch.tensor(list(new_ids), dtype=torch.long, device=self.net.device)
            with torch.inference_mode():
                hidden = self.net.forward_hidden(ids, cache, **self._positions(prompt, start, len(new_ids), len(seq)))
                return self.net.logits(hidden[-1:])[0].float().cpu().numpy()

        # ChatGLM-6B's prompt attends both ways, so it must be fed as one chunk (and no prefix is reused)
        chunk = max(len(prompt), 1) if self.spec.version == 1 else 512
        cached, run = 0, cast("Step", step)
        if self.spec.version != 1:  # the longest stored prefix goes into the cache; only the rest is read
            cached, prefix = lookup_kv(self.prefix_cache, prompt)
            if cached:
                with torch.inference_mode():
                    cache.extend([(k.to(self.net.device), v.to(self.net.device)) for k, v in prefix])
            run = remembering(self.prefix_cache, prompt, step, length=lambda: cache.length,
                              layers=lambda: _cache_layers(cache))
        yield from generate_tokens(run, prompt, config, context_length=self.context_length, prompt_chunk=chunk,
                                   cached=cached)

    def _batch_decoder(self, slots: int) -> ChatGLMBatchDecoder:
        return ChatGLMBatchDecoder(self, slots=slots)

    def _logits(self, ids: list[int]) -> npt.NDArray[np.float32]:
        t = torch.tensor(ids, dtype=torch.long, device=self.net.device)
        with torch.inference_mode():
            hidden = self.net.forward_hidden(t, None, **self._positions(ids, 0, len(ids)))
            return self.net.logits(hidden).float().cpu().numpy()

    def _hidden_states(self, ids: list[int]) -> npt.NDArray[np.float32]:
        """The final-norm hidden states of one forward pass over ``ids`` (no cache), the
        vectors the output layer reads (ChatGLM-6B: the tied word embeddings), with the
        positions and attention ``_logits`` uses (ChatGLM-6B: 2D positions, the context before
        the first ``<sop>`` attended both ways). :meth:`Model.embed` mean-pools them over
        ``tokenize(text)``: ChatGLM2/3 ``[gMASK] sop`` then the text; ChatGLM-6B the text then
        ``[gMASK] <sop>``."""
        t = torch.tensor(ids, dtype=torch.long, device=self.net.device)
        with torch.inference_mode():
            hidden = self.net.forward_hidden(t, None, **self._positions(ids, 0, len(ids)))
            return hidden.float().cpu().numpy()

    def _close(self) -> None:
        self.net = None  # type: ignore[assignment]
        self.prefix_cache.clear()

    # ---- extras --------------------------------------------------------------------------
    def weight_bytes(self) -> int:
        """Resident bytes of the network's parameters and buffers."""
        return resident_bytes(self.net)


class ChatGLMBatchDecoder(RowBatchDecoder):
    """Several ChatGLM sequences in one forward pass per step (the shared
    :class:`~openllm_hub.engines.torch_batch.RowBatchDecoder`, whose doc says where results
    may differ from a single run).

    A joining prompt is read alone, as the single path reads it (ChatGLM2/3: in chunks of 512
    ids; ChatGLM-6B: in one piece, its prompt attends both ways), into its own batch-1 KV
    cache, which then becomes a row of the batch's ragged
    :class:`~openllm_hub.engines.kv_cache.KVCache` (``add_rows``). Each step runs the
    network's ``forward_rows``: one token per row at the row's own position (ChatGLM-6B: its
    2D position, the prompt's last position and the next block position, as
    :func:`~openllm_hub_chatglm.network.glm1.position_ids` continues it), attention masked to
    the row's own positions. ChatGLM2/3 prompts start from the longest prefix the model's
    prefix cache holds of them, as on the single path. ``slots`` sequences of at most
    :attr:`slot_tokens` tokens fit the model's ``batch_kv_bytes`` (default: half the free memory;
    see :func:`~openllm_hub.engines.torch_batch.plan_rows`); the caches never grow past
    :attr:`slot_tokens` positions a row.
    """

    def __init__(self, model: ChatGLMModel, *, slots: int = 1, step_tokens: int = 512,
                 keep_logits: bool = False) -> None:
        budget = model.batch_kv_bytes if model.batch_kv_bytes is not None else kv_budget_bytes(model.info.device)
        super().__init__(model.context_length, step_tokens=step_tokens, keep_logits=keep_logits, slots=slots,
                         kv_bytes_per_token=model.info.extra.get("kv_bytes_per_token"), kv_budget=budget)
        self.model = model
        self._limit = self.slot_tokens or model.context_length
        self._cache: KVCache | None = model.net.new_cache(self._limit, batch=0)
        #: ChatGLM-6B, per row: (prompt length, last prompt position, last prompt block position)
        self._rows2d: list[tuple[int, int, int]] = []

    def _prefill(self, prompt_ids: list[int]) -> tuple[Any, npt.NDArray[np.float32]]:
        model, net = self.model, self.model.net
        cache = net.new_cache(self._limit)
        if model.spec.version != 1:  # in the single path's chunks (512), after the longest stored prefix

            def forward(ids: Sequence[int]) -> npt.NDArray[np.float32]:
                hidden = net.forward_hidden(torch.tensor(list(ids), dtype=torch.long, device=net.device), cache)
                row: npt.NDArray[np.float32] = net.logits(hidden[-1:])[0].float().cpu().numpy()
                return row

            def load(prefix: KVLayers) -> None:
                cache.extend([(k.to(net.device), v.to(net.device)) for k, v in prefix])

            with torch.inference_mode():
                logits, _ = read_prompt(model.prefix_cache, prompt_ids, forward=forward, load=load,
                                        layers=lambda: _cache_layers(cache))
            return (cache, None), logits
        # ChatGLM-6B: the prompt attends both ways, so it is read in one piece (no prefix reused)
        with torch.inference_mode():
            ids = torch.tensor(prompt_ids, dtype=torch.long, device=net.device)
            hidden = net.forward_hidden(ids, cache, **model._positions(prompt_ids, 0, len(ids), len(prompt_ids)))
            logits_v1: npt.NDArray[np.float32] = net.logits(hidden[-1:])[0].float().cpu().numpy()
        pos, block, _ = position_ids(prompt_ids, model.spec)
        return (cache, (len(prompt_ids), pos[-1], block[-1])), logits_v1

    def _merge(self, cache: Any, length: int) -> None:
        assert self._cache is not None
        rows, rope = cache
        self._cache.add_rows(rows)
        if rope is not None:
            self._rows2d.append(rope)

    def _decode(self, tokens: list[int], positions: list[int]) -> npt.NDArray[np.float32]:
        net = self.model.net
        dev = net.device
        assert self._cache is not None
        ids = torch.tensor(tokens, dtype=torch.long, device=dev)
        with torch.inference_mode():
            if isinstance(net, GLM2Network):
                hidden = net.forward_rows(ids, self._cache, torch.tensor(positions, dtype=torch.long, device=dev))
            else:
                assert isinstance(net, GLM1Network)
                # a generated token at index t repeats the prompt's last position; its block position counts on
                pos = [last for _, last, _ in self._rows2d]
                block = [b + t - n + 1 for (n, _, b), t in zip(self._rows2d, positions, strict=True)]
                hidden = net.forward_rows(ids, self._cache, torch.tensor(pos, dtype=torch.long, device=dev),
                                          torch.tensor(block, dtype=torch.long, device=dev))
            rows: npt.NDArray[np.float32] = net.logits(hidden).float().cpu().numpy()
        return rows

    def _drop(self, index: int) -> None:
        assert self._cache is not None
        keep = [i for i in range(self._cache.batch) if i != index]
        self._cache.reorder(torch.tensor(keep, dtype=torch.long, device=self.model.net.device))
        if self._rows2d:
            self._rows2d.pop(index)

    def close(self) -> None:
        super().close()
        self._cache = None


def _device(kind: str, gpu_ids: tuple[int, ...]) -> torch.device:
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise IncompatibleDeviceError("this torch build has no CUDA", where="device", fix="use device='cpu'")
        return torch.device(f"cuda:{gpu_ids[0] if gpu_ids else 0}")
    return torch.device("cpu")


def load_chatglm(req: LoadRequest[ChatGLMOptions]) -> ChatGLMModel:
    """Build a :class:`ChatGLMModel` from a LoadRequest (see :class:`ChatGLMOptions`)."""
    opts = req.options
    folder = Path(req.path)
    if not (folder / "config.json").is_file():
        raise NotFoundError("config.json is missing", where=folder, fix="a ChatGLM checkpoint folder holds config.json")
    cfg = read_json(folder / "config.json")
    spec = read_spec(folder, cfg, opts.variant)
    tokenizer = load_tokenizer(folder, spec.variant)
    if tokenizer.vocab_size > spec.vocab_size:
        raise InvalidParameterError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                                    f"{spec.vocab_size} embeddings", where=folder,
                                    fix="the tokenizer belongs to another checkpoint")
    if opts.lora:
        raise InvalidParameterError("LoRA adapters (lora=...) are applied by llama.cpp only", where="lora",
                                    fix="load a ChatGLM GGUF file (or quantize='q8_0', ...) with lora=..., or "
                                        "merge the adapter into the checkpoint")
    placement = req.placement
    dtype = DTYPES[placement.dtype]
    device = _device(placement.kind, placement.gpu_ids)
    if placement.threads and placement.kind == "cpu":
        torch.set_num_threads(placement.threads)
    plan = quant_plan(spec, opts.quantize, opts.quantize_embeddings, dtype)
    # names and shapes from the files' headers first: a broken or mismatched checkpoint fails here,
    # before the network is allocated and any weight is read (legacy .bin pickles: while loading)
    stored = stored_tensors(folder)
    if stored is not None:
        checkpoint_layout(spec, dtype, plan).check_stored(stored, folder)
    net = build_network(spec, dtype, plan, device)
    try:
        net.load_tensors(finite_tensors(iter_tensors(folder), folder))  # NaN/Inf weights refused by name
    except CorruptFileError as exc:  # the network names the tensor; the error names the folder it came from
        if exc.where != "checkpoint":
            raise
        raise CorruptFileError(exc.what, where=folder, fix=exc.fix) from None
    net.eval()
    kernel_layers = use_cpu_int4_kernels(net) if plan.bits == 4 and dtype == torch.bfloat16 else 0
    cap = context_cap(opts)
    ctx = spec.max_length if cap is None else min(cap, spec.max_length)
    quant = f"int{plan.bits}" if plan.bits else None
    n_params = spec.parameter_count()
    # ChatGLM-6B cannot reuse a prefix (see the module doc): its prefix cache is always off
    cache_mib = 0 if spec.version == 1 else (
        opts.prefix_cache_mib if opts.prefix_cache_mib is not None else default_prefix_cache_mib())
    info = ModelInfo(
        family="chatglm", format=req.format, engine="torch (openllm_hub_chatglm)", path=str(folder),
        device=str(device), parameters=n_params, quantization=quant, context_length=ctx,
        vocab_size=spec.vocab_size, dtype=placement.dtype,
        extra={"variant": spec.variant, "checkpoint_quantization_bit": spec.quantization_bit,
               "quantized_embeddings": bool(plan.bits and plan.embeddings),
               "weight_bytes": resident_bytes(net), "placement": placement.reason,
               "cpu_int4_kernel_layers": kernel_layers, "prefix_cache_mib": cache_mib,
               # one token's keys and values (the batched decoder's memory plan; serve's default --parallel)
               "kv_bytes_per_token": 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * dtype.itemsize},
    )
    template = opts.chat_template or spec.variant
    model = ChatGLMModel(info, net, tokenizer, spec, ctx, template)
    # the folder's own Jinja template is there by name ("model"); the default stays the named one:
    # it is the official code's chat() construction (build_chat_input / build_prompt), which also
    # renders tools and observations, which ChatGLM3's shipped Jinja text does not (on plain
    # conversations both give the same ids: plugins/chatglm/tests/test_chat_ids.py)
    model._set_model_chat_template(*read_chat_template(folder))
    model.default_chat_template = template
    model.prefix_cache = PrefixCache(cache_mib * 2**20)
    if opts.batch_kv_mib is not None:
        model.batch_kv_bytes = opts.batch_kv_mib * 2**20
    if opts.seed is not None:
        model.generation_defaults = model.generation_defaults.model_copy(update={"seed": opts.seed})
    return model


def context_cap(opts: ChatGLMOptions) -> int | None:
    """The context cap the options ask for: ``context_length``, else llama.cpp's name ``n_ctx``."""
    return opts.context_length if opts.context_length is not None else opts.n_ctx


def use_cpu_int4_kernels(net: GLMNetwork) -> int:
    """Move INT4 linears on the CPU to torch's int4 kernel (fast with bfloat16 activations;
    the embedding table keeps its row layout for lookups). Returns how many moved."""
    from openllm_hub.engines.torch_quant import QuantEmbedding, QuantLinear

    skip = {id(m.inner) for m in net.modules() if isinstance(m, QuantEmbedding)}
    return sum(1 for m in net.modules()
               if isinstance(m, QuantLinear) and id(m) not in skip and m.use_cpu_int4_kernel())


def quant_plan(spec: GLMSpec, quantize: str | None, embeddings: bool, dtype: torch.dtype) -> QuantPlan:
    """What to quantize: the checkpoint's own INT8/INT4 layers, or what ``quantize`` asks."""
    asked = {"int8": 8, "int4": 4}.get(quantize or "", 0)
    if spec.quantization_bit:
        if asked and asked != spec.quantization_bit:
            raise InvalidParameterError(
                f"this checkpoint is already INT{spec.quantization_bit}; it cannot be loaded as int{asked}",
                where="quantize", fix=f"omit quantize, or pass quantize='int{spec.quantization_bit}'")
        return QuantPlan(bits=spec.quantization_bit, embeddings=embeddings)
    return QuantPlan(bits=asked, embeddings=embeddings and bool(asked))
