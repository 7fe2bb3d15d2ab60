"""``GET /metrics``: the server's state and work in Prometheus' text format (prometheus_client).

Every app has its own registry (several apps in one process, as in tests, do not mix their
numbers). What is exported, all prefixed ``openllm_hub_``:

* ``requests_running``, ``requests_waiting``, ``slots`` (gauges, read from the scheduler when
  scraped);
* ``requests_refused_total`` (429: every slot and queue place taken);
* ``requests_total{outcome}``: finished requests by outcome, ``stop``/``length`` (a complete
  answer), ``cancelled`` (the client left or the server stopped) or ``error``;
* ``prompt_tokens_total`` (prompts admitted into a slot) and ``generated_tokens_total`` (every
  token sent, cancelled requests' included);
* ``time_to_first_token_seconds``: from admission into the queue to the first generated text
  (waiting included, as a client sees it);
* ``time_per_output_token_seconds``: per request with two or more tokens, the mean time
  between its tokens after the first;
* for an engine with a prefix cache (``Model.prefix_cache_stats``, read when scraped):
  ``prefix_cache_hits_total``, ``prefix_cache_misses_total``, ``prefix_cache_evictions_total``,
  ``prefix_cache_tokens_reused_total`` (prompt tokens not read again) and the gauges
  ``prefix_cache_bytes``, ``prefix_cache_budget_bytes``, ``prefix_cache_entries``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from openllm_hub.core.model import Chunk

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: seconds; from a fast model on a GPU to a big one on a loaded CPU with a long queue
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
OUTCOMES = ("stop", "length", "cancelled", "error")


#: The prefix cache's counters and gauges: stats key -> (help text, counter?)
_PREFIX_CACHE = {
    "hits": ("prompts that reused a stored prefix", True),
    "misses": ("prompts that found no stored prefix", True),
    "evictions": ("stored prefixes evicted to stay within the budget", True),
    "tokens_reused": ("prompt tokens taken from stored prefixes instead of being read", True),
    "bytes": ("bytes the stored prefixes hold", False),
    "budget_bytes": ("the prefix cache's budget in bytes (prefix_cache_mib)", False),
    "entries": ("stored prefixes", False),
}


class _PrefixCacheCollector(Collector):
    """The engine's prefix-cache counters, read when scraped (the engine keeps them)."""

    def __init__(self, stats: Callable[[], dict[str, int] | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if stats is None:
            return
        for key, (text, counter) in _PREFIX_CACHE.items():
            if key in stats:
                kind = CounterMetricFamily if counter else GaugeMetricFamily
                yield kind(f"openllm_hub_prefix_cache_{key}", text, value=float(stats[key]))


class ServerMetrics:
    """The metrics of one app; the scheduler reports to it, ``/metrics`` renders it."""

    def __init__(self, running: Callable[[], int], waiting: Callable[[], int], slots: int,
                 prefix_cache: Callable[[], dict[str, int] | None] = lambda: None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        r.register(_PrefixCacheCollector(prefix_cache))
        g = Gauge("openllm_hub_requests_running", "requests in a slot, generating", registry=r)
        g.set_function(lambda: float(running()))
        g = Gauge("openllm_hub_requests_waiting", "requests queued for a slot", registry=r)
        g.set_function(lambda: float(waiting()))
        Gauge("openllm_hub_slots", "requests that may run at once (--parallel)", registry=r).set(slots)
        self._refused = Counter("openllm_hub_requests_refused", "requests refused with 429 (queue full)",
                                registry=r)
        self._requests = Counter("openllm_hub_requests", "finished requests by outcome", ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self._requests.labels(outcome)
        self._prompt = Counter("openllm_hub_prompt_tokens", "prompt tokens of requests admitted into a slot",
                               registry=r)
        self._generated = Counter("openllm_hub_generated_tokens", "generated tokens sent", registry=r)
        self._ttft = Histogram("openllm_hub_time_to_first_token_seconds",
                               "seconds from arrival to the first generated token", buckets=TTFT_BUCKETS, registry=r)
        self._tpot = Histogram("openllm_hub_time_per_output_token_seconds",
                               "mean seconds between a request's tokens after the first", buckets=TPOT_BUCKETS,
                               registry=r)

    def refused(self) -> None:
        self._refused.inc()

    def admitted(self, prompt_tokens: int) -> None:
        self._prompt.inc(prompt_tokens)

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def generated(self, tokens: int) -> None:
        self._generated.inc(tokens)

    def finished(self, outcome: str, final: Chunk | None) -> None:
        self._requests.labels(outcome).inc()
        if final is not None and final.usage is not None and final.timings is not None \
                and final.usage.completion_tokens >= 2:
            self._tpot.observe(final.timings.generation_seconds / (final.usage.completion_tokens - 1))

    def render(self) -> bytes:
        text: bytes = generate_latest(self.registry)
        return text


__all__ = ["CONTENT_TYPE", "ServerMetrics"]
