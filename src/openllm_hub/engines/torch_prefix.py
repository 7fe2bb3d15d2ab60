"""The torch engines' prefix cache: a read prompt's keys and values kept, a later prompt's longest stored prefix reused.

HF LLaMA (transformers' ``DynamicCache``) and ChatGLM2/3 (:class:`~openllm_hub.engines.kv_cache.KVCache`)
both hold a prompt read alone as one ``(1, kv_heads, length, head_dim)`` key tensor and one value
tensor per layer. What they do with the model's :class:`~openllm_hub.engines.prefix_cache.PrefixCache`
(the engine-agnostic store llama.cpp uses too) is the same, so it lives here once; an engine only
says how its cache hands out its layers and takes a prefix back:

* **after a prompt is read** (:func:`store_kv`, or a step wrapped by :func:`remembering`): copies
  of every layer's keys and values of exactly the prompt's positions go into the store, their
  bytes counted against its budget, unless the store is off, an entry holds the whole prompt
  already, or the last position's logits are not finite (a broken state is never stored). The
  copies live in host RAM whatever the device, as llama.cpp's state blobs do, so the budget
  (``prefix_cache_mib``, default an eighth of the free RAM) means the same for every engine; on
  CUDA a hit costs one host-to-device copy of the prefix, far less than computing it again.
* **before a prompt is read** (:func:`lookup_kv`): the stored entry sharing the longest prefix
  with it (at least one 64-id block; at most ``len(prompt) - 1`` ids, so the last position is
  computed: its logits give the first token) is cropped to the shared length; the engine puts it
  into an empty cache and reads only the rest, in the chunks it always uses
  (``generate_tokens(..., cached=n)`` on the single path, :func:`read_prompt` in the batched
  decoders' ``_prefill``, so both compute the same thing).

Why a hit gives the cold run's result: attention is causal and rotary positions are absolute, so
position ``i``'s keys and values depend on ids ``0..i`` only and sit at the same position in the
new prompt. They were computed as part of another prompt, in its chunks (a matrix product over
another number of rows may sum in another order), so a hit's logits may differ from a cold run's
in the last bits; the engines' tests bound it in float32. This does not hold for ChatGLM-6B (v1),
whose prompt attends bidirectionally up to its closing ``[gMASK] <sop>``: every prompt position
depends on the whole prompt, so no prefix of it can be reused and its engine keeps the store off.

torch and numpy are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from openllm_hub.engines.prefix_cache import PrefixCache

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt
    import torch

#: One tensor pair per layer: keys and values ``(1, kv_heads, length, head_dim)``.
KVLayers = list[tuple["torch.Tensor", "torch.Tensor"]]
#: ``step(new_ids) -> logits of the last position`` (the core's generation loop's step).
Step = Callable[[Sequence[int]], "npt.NDArray[np.float32]"]


def lookup_kv(store: PrefixCache, prompt_ids: Sequence[int]) -> tuple[int, KVLayers]:
    """The longest stored prefix of ``prompt_ids`` that is worth restoring: how many ids it
    covers (at most ``len(prompt_ids) - 1``) and its layers' keys and values cropped to them
    (host tensors, read-only: copy them into the engine's cache); ``(0, [])`` when there is none."""
    if not store.enabled or len(prompt_ids) <= store.block_tokens:
        return 0, []
    hit = store.lookup(prompt_ids, max_length=len(prompt_ids) - 1)
    if hit is None:
        return 0, []
    n = hit.length
    return n, [(k[:, :, :n], v[:, :, :n]) for k, v in hit.value]


def store_kv(store: PrefixCache, prompt_ids: Sequence[int], layers: KVLayers,
             logits: npt.NDArray[np.float32] | None) -> bool:
    """Keep copies (host RAM) of ``layers``' keys and values, which hold exactly ``prompt_ids``
    (called right after the prompt's last position was computed, whose ``logits`` must be
    finite), unless the store is off, holds the whole prompt already, or cannot hold this entry
    (or the cache does not hold every position of the prompt). Returns whether it was stored."""
    import numpy as np
    import torch

    n = len(prompt_ids)
    if not store.enabled or n < store.block_tokens or logits is None or store.covers(prompt_ids):
        return False
    if not bool(np.isfinite(logits).all()):  # never store a broken state
        return False
    if any(int(k.shape[2]) != n or int(v.shape[2]) != n for k, v in layers):
        return False  # the cache does not hold every position (e.g. a sliding window): nothing to reuse
    nbytes = sum(t.numel() * t.element_size() for pair in layers for t in pair)
    if nbytes > store.budget_bytes:
        return False
    with torch.inference_mode():
        kept = [(k.to(device="cpu", copy=True, memory_format=torch.contiguous_format),
                 v.to(device="cpu", copy=True, memory_format=torch.contiguous_format)) for k, v in layers]
    return store.put(prompt_ids, kept, nbytes)


def remembering(store: PrefixCache, prompt_ids: Sequence[int], step: Step, *, length: Callable[[], int],
                layers: Callable[[], KVLayers]) -> Step:
    """``step`` (the single path's ``generate_tokens`` step over one cache), storing the cache
    in ``store`` once it holds exactly the prompt (``length()`` positions; ``layers()`` gives its
    keys and values). A stream closed before its prompt is read stores nothing."""
    if not store.enabled:
        return step
    goal = len(prompt_ids)

    def wrapped(new_ids: Sequence[int]) -> npt.NDArray[np.float32]:
        logits = step(new_ids)
        if length() == goal:
            store_kv(store, prompt_ids, layers(), logits)
        return logits

    return wrapped


def read_prompt(store: PrefixCache, prompt_ids: Sequence[int], *, load: Callable[[KVLayers], None],
                forward: Step, layers: Callable[[], KVLayers], chunk: int = 512
                ) -> tuple[npt.NDArray[np.float32], int]:
    """Read ``prompt_ids`` into an empty cache as the single path does, reusing the longest
    stored prefix: ``load`` puts the prefix's keys and values into the cache, ``forward`` reads
    ids after the cached ones and returns the last position's logits (called with chunks of
    ``chunk`` ids from the first id not restored), ``layers`` gives the cache's keys and values
    once the prompt is read (stored unless held already). Returns the last position's logits
    and how many ids were restored."""
    cached, prefix = lookup_kv(store, prompt_ids)
    if cached:
        load(prefix)
    logits = None
    for start in range(cached, len(prompt_ids), chunk):
        logits = forward(prompt_ids[start:start + chunk])
    if logits is None:
        raise ValueError("an empty prompt cannot be read")
    if store.enabled:
        store_kv(store, prompt_ids, layers(), logits)
    return logits, cached


__all__ = ["KVLayers", "Step", "lookup_kv", "read_prompt", "remembering", "store_kv"]
