"""A store of computed prompt prefixes (KV cache or recurrent state), found by token ids, within a memory budget.

Requests that share a prefix (a system prompt, a chat history) need not compute it again: an
engine that has read a prompt puts what it computed for it (an opaque ``value``: a llama.cpp
sequence state blob, a torch KV cache, ...) here with the prompt's ids and its size in bytes,
and a later prompt asks for the entry sharing its longest prefix (:meth:`PrefixCache.lookup`),
restores it, drops what lies beyond the shared part and reads only the rest.

Nothing here knows an engine. Entries are indexed by chained hashes of ``block_tokens``-token
blocks (block k's hash covers every id up to its end, as vLLM's and llama-server's caches do),
so a lookup walks the prompt's blocks until one is unknown, then compares the candidates' ids
token by token (the match is exact to the token, and a hash collision cannot give a wrong
entry). A match shorter than one block is not worth a restore and is not reported. The sum of
the entries' sizes stays within ``budget_bytes``: the least recently used entries are evicted
first; an entry larger than the whole budget is not stored. An entry whose ids are a prefix
of a newer one is dropped (the newer one serves every prompt it served).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Tokens per hashed block (matches shorter than one block are not reported).
DEFAULT_BLOCK_TOKENS = 64


def default_prefix_cache_mib() -> int:
    """The default budget of every engine's prefix cache (load option ``prefix_cache_mib``
    unset): an eighth of the available RAM, at most 4 GiB. Entries live in RAM whatever the
    device (llama.cpp's state blobs; the torch engines' KV tensors are kept on the host too)."""
    from openllm_hub.core.plan import available_ram

    free = available_ram()
    return 1024 if free is None else min(4096, free // 8 // 2**20)


@dataclass(frozen=True)
class PrefixHit:
    """The entry sharing the longest prefix with a prompt: its ``value`` (as stored), the ``ids``
    it was computed for and how many leading ids the prompt shares with them (``length``)."""

    value: Any
    ids: tuple[int, ...]
    length: int


@dataclass
class _Entry:
    ids: tuple[int, ...]
    value: Any
    nbytes: int
    hashes: tuple[bytes, ...]


def block_hashes(ids: Sequence[int], block_tokens: int) -> list[bytes]:
    """Chained hashes of the full ``block_tokens``-token blocks of ``ids``: the k-th one depends
    on every id of blocks 0..k."""
    out: list[bytes] = []
    prev = b""
    for start in range(0, len(ids) - block_tokens + 1, block_tokens):
        block = b"".join(int(t).to_bytes(4, "little", signed=True) for t in ids[start:start + block_tokens])
        prev = hashlib.blake2b(prev + block, digest_size=16).digest()
        out.append(prev)
    return out


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    """Computed prefixes keyed by token ids, least recently used evicted past ``budget_bytes``
    (0 disables the cache: nothing is stored). Thread-safe."""

    def __init__(self, budget_bytes: int, *, block_tokens: int = DEFAULT_BLOCK_TOKENS) -> None:
        if budget_bytes < 0:
            raise ValueError("budget_bytes must be >= 0")
        if block_tokens < 1:
            raise ValueError("block_tokens must be >= 1")
        self.budget_bytes = budget_bytes
        self.block_tokens = block_tokens
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # oldest use first
        self._index: dict[bytes, set[int]] = {}
        self._next = 0
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.tokens_reused = 0

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: Sequence[int], *, max_length: int | None = None) -> PrefixHit | None:
        """The entry sharing the longest prefix with ``ids`` (at least one block, at most
        ``max_length`` ids: an engine that must compute the last prompt token passes
        ``len(ids) - 1``), now the most recently used; None when there is none."""
        limit = len(ids) if max_length is None else min(max_length, len(ids))
        if not self.enabled or limit < self.block_tokens:
            return None
        hashes = block_hashes(ids[:limit], self.block_tokens)
        with self._lock:
            candidates: set[int] = set()
            for h in hashes:
                found = self._index.get(h)
                if not found:
                    break
                candidates = found
            best: tuple[int, int] | None = None  # (length, key)
            for key in candidates:
                n = min(_common(self._entries[key].ids, ids), limit)
                if best is None or n > best[0]:
                    best = (n, key)
            if best is None or best[0] < self.block_tokens:
                self.misses += 1
                return None
            entry = self._entries[best[1]]
            self._entries.move_to_end(best[1])
            self.hits += 1
            self.tokens_reused += best[0]
            return PrefixHit(entry.value, entry.ids, best[0])

    def covers(self, ids: Sequence[int]) -> bool:
        """Whether an entry holds all of ``ids`` already (so storing them adds nothing)."""
        if not self.enabled or len(ids) < self.block_tokens:
            return True
        hashes = block_hashes(ids, self.block_tokens)
        with self._lock:
            return any(len(e.ids) >= len(ids) and _common(e.ids, ids) == len(ids)
                       for e in (self._entries[k] for k in self._index.get(hashes[-1], ())))

    def put(self, ids: Sequence[int], value: Any, nbytes: int) -> bool:
        """Store ``value`` (``nbytes`` of memory) computed for ``ids``; evicts least recently used
        entries past the budget. Returns whether it was stored (not when it is shorter than a
        block or larger than the whole budget)."""
        key_ids = tuple(int(t) for t in ids)
        if not self.enabled or len(key_ids) < self.block_tokens or nbytes > self.budget_bytes:
            return False
        hashes = tuple(block_hashes(key_ids, self.block_tokens))
        with self._lock:
            # entries this one covers (their ids are a prefix of these) serve no prompt it would not
            for key in list(self._index.get(hashes[0], ())):
                old = self._entries[key]
                if len(old.ids) <= len(key_ids) and key_ids[:len(old.ids)] == old.ids:
                    self._drop(key)
            key = self._next
            self._next += 1
            self._entries[key] = _Entry(key_ids, value, nbytes, hashes)
            self.nbytes += nbytes
            for h in hashes:
                self._index.setdefault(h, set()).add(key)
            while self.nbytes > self.budget_bytes:
                oldest = next(iter(self._entries))
                self._drop(oldest)
                self.evictions += 1
            return True

    def clear(self) -> None:
        with self._lock:
            for key in list(self._entries):
                self._drop(key)

    def stats(self) -> dict[str, int]:
        """Budget, use and counters (for ``info.extra``, metrics and benchmarks)."""
        with self._lock:
            return {"budget_bytes": self.budget_bytes, "bytes": self.nbytes, "entries": len(self._entries),
                    "hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                    "tokens_reused": self.tokens_reused}

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key)
        self.nbytes -= entry.nbytes
        for h in entry.hashes:
            keys = self._index.get(h)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._index[h]


__all__ = ["DEFAULT_BLOCK_TOKENS", "PrefixCache", "PrefixHit", "block_hashes", "default_prefix_cache_mib"]
