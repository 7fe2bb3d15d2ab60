#!/usr/bin/env python3
"""Every CUDA path of openllm_hub, checked in one short run against CPU fp32 on the same weights.

    scripts/gpu_check.sh [--out report.json] [--only NAME,...] [--big-hidden 2048 --big-layers 16]
    scripts/gpu_check.sh --cpu          # the same comparisons with the "GPU" side on the CPU (CI)
    scripts/gpu_check.sh --cpu --perturb --only llama-hf   # negative control: must report FAIL

What it does (at most 8 minutes on one H200; ``--cpu`` about 16 s on two idle cores, of which the
paths for several sequences take 5 s; up to 100 s when other jobs share the cores):

* builds its own models with the plugins' tiny builders (a HF LLaMA, ChatGLM2 and -6B, RWKV-4/6/7 .pth
  files, a GLM-130B-shaped SAT checkpoint, a GGUF converted from the LLaMA);
* runs each path below, compares its logits with the CPU fp32 run of the same weights
  (``max |device - cpu| / (cpu.max() - cpu.min())`` over every position of two prompts) against
  the bound of the dtype it computes in (:data:`BOUNDS`, each justified there), and measures
  greedy decode tokens/s;
* prints one line per path (PASS / FAIL / SKIP, the difference, the bound, tokens/s) and writes a
  JSON report (``--out``; default ``$OUT/gpu_check.json`` when ``$OUT`` is set, else
  ``gpu_check.json``); exits 1 when a path FAILs or ERRORs.

Paths: transformers LLaMA on cuda (fp32/fp16/bf16, placed with ``device_map={"": "cuda:0"}``; the
``device_map="auto"`` split over two GPUs), llama.cpp CUDA offload (-ngl 0 / half / all / the
engine's own gpu-layer plan; q8_0 with all layers), the ChatGLM torch engine (ChatGLM2 fp16, bf16,
fp32, INT8, INT4; ChatGLM-6B fp16, INT4),
RWKV strategies (``cuda fp16``, ``cuda fp32``, ``cuda fp16i8``, a GPU/CPU split, streamed layers; RWKV-4,
6 and 7), GLM-130B ranks over NCCL (TP=1 in fp32/fp16/bf16, offload, INT8, INT4; TP=2 over two GPUs;
whether NCCL accepts two ranks on one GPU; ``load()`` in-process), LoRA training steps, and the decode
speed of the largest LLaMA of the run against the H200's memory bandwidth (4.3 TB/s measured copy
rate). Torch paths also record ``torch.cuda.max_memory_allocated`` against the planner's estimate.

Several sequences at once (what ``generate_batch`` and the server's slots run), each family's paths
after its single-sequence ones:

* ``<family>/batch <dtype>``: the batched decoders of HF LLaMA (``HFBatchDecoder``), ChatGLM2
  (``ChatGLMBatchDecoder``), GLM-130B (``GLM130BBatchDecoder``, one rank in this process) and
  llama.cpp (``LlamaCppBatchDecoder``, every layer offloaded: ``llama.cpp/batch f16 -ngl all``)
  decode, greedily, four short prompts and one of >= 1,024 tokens that joins the running batch at
  step 2, while another leaves half way; every logits row each sequence sampled from is compared
  with CPU fp32 ``Model.logits`` over the same sequence alone (llama.cpp: its CPU run of the same
  GGUF). The torch decoders run in fp32 (whose bound sees a batching bug) and the 16-bit dtype.
  Tokens/s is the aggregate rate of 8 sequences in one ``generate_batch`` (wall time, prompts
  included); the detail has 1 sequence's rate and the ratio (``speedup_8_vs_1``; no bound on speed).
* ``<family>/prefix-cache hit`` (HF LLaMA, ChatGLM2): a prompt is read, then one sharing its first
  ~160 tokens: its rows (the prefix's keys and values copied back from host RAM to the device)
  against CPU fp32 and against the device's own cold ``Model.logits``; a hit must be counted on the
  batched decoder's path and on the single path (``generate``).
* ``<family>/batch memory budget`` (HF LLaMA, ChatGLM2): the default KV budget is half of
  ``torch.cuda.mem_get_info``'s free memory of the model's device (``plan_rows``); with a budget of
  two 512-token slots, eight sequences run two rows at a time, all finish, and the cache stays
  within the budget (``kv-budget``).
* ``<family>/embed`` (HF LLaMA, ChatGLM2, GLM-130B): ``Model.embed`` on the device against CPU fp32.
* ``glm130b/load(nproc=2)`` and ``glm130b/batch nproc=2``: rank 0 in this process and one follower
  process (logits, decode speed, the batched decoder over both ranks).

Paths that need two GPUs (``device_map="auto"``, GLM-130B TP=2 over NCCL, ``load(..., nproc=2)``,
whose rank r takes cuda:r) print SKIP with the reason on a one-GPU machine; in ``--cpu`` mode every
path runs (the GLM-130B ranks over gloo, TP=1 and TP=2, and ``load(..., nproc=2)``).

Time on the H200 (estimated, not yet measured): the paths for several sequences add about a minute:
about 21 loads of tiny models (1-2 s each with transformers), ~1,000 decode steps of them (10-15 ms
each, kernel launches and Python, not bandwidth), and CPU fp32 references of ~1,100-token sequences
on 8 threads (under 0.5 s each). ``--budget-s`` still bounds the whole run.

On the GPU machine, with the device tool's ``run`` (prepare here once with
``scripts/gpu_prepare.sh``, which fills the git-ignored ``.gpu/``, 7 MiB; carry it), one call,
``carry=[".gpu"]``, ``timeout_s=600``::

    set -o pipefail; export PYTHONUNBUFFERED=1; T0=$(date +%s); scripts/gpu_build_llama_cpp.sh 2>&1; \
    scripts/gpu_check.sh --budget-s $((510 - $(date +%s) + T0)) --out $OUT/gpu_check.json 2>&1 | tee $OUT/gpu_check.log

``gpu_build_llama_cpp.sh`` installs the carried wheels and builds llama-cpp-python with CUDA into
``/tmp/site`` (it prints how long the build took); ``gpu_check.sh`` puts ``/tmp/site`` and the repo's
``src`` folders on PYTHONPATH (our packages pin torch==2.13.0, the machine has torch 2.11: they are
not pip-installed there) and this script declares the plugins' entry points itself. ``--budget-s``
makes the paths left when the time is spent SKIP, so the report is always written within the
10-minute command limit; run those again at once with ``--only`` while the machine is warm.
Without the llama.cpp build the -ngl paths say SKIP and why. benchmarks/RESULTS.md ("GPU check")
says what to record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

#: Bounds on max |device - cpu fp32| / (cpu fp32 logit range), by the precision the device side
#: computes in. The reference is always CPU fp32 on the same (for INT8/INT4: the same quantized)
#: weights, so only arithmetic differs.
BOUNDS: dict[str, float] = {
    # fp32 on CUDA (TF32 switched off below): only the summation order of cuBLAS and of the CPU
    # kernels differ, ~1e-7 relative per dot product; through a few layers 1e-5 is typical, 1e-4
    # leaves a factor of 10.
    "fp32": 1e-4,
    # fp16 keeps 11 significant bits (unit roundoff 4.9e-4) with fp32 accumulation in cuBLAS; weights
    # and activations rounded in each of a few layers give ~5e-3 of the logit range; 2e-2 is 4x that
    # (the GLM-130B plugin's CUDA check used the same bound).
    "fp16": 2e-2,
    # bf16 keeps 8 significant bits (unit roundoff 3.9e-3), 8x fp16's; same reasoning gives ~3e-2,
    # 8e-2 leaves about 2.5x.
    "bf16": 8e-2,
    # Weight-only INT8/INT4 compared with the CPU fp32 run of the same quantized weights: the arithmetic
    # is the fp16 (or bf16) one, plus weights quantized from a 16-bit copy on one side and from fp32 on
    # the other, which moves a rare rounding tie by one step (1/127, 1/7 of a row's maximum).
    "int8": 3e-2,
    "int4": 5e-2,
    "int8-bf16": 8e-2,
    "int4-bf16": 1e-1,
    # Tensor parallel INT8/INT4 (each rank quantizes its own slice: the TP=1 quantized weights are no
    # reference), compared with fp32 weights: the quantization error itself. Per-row INT8 errors are
    # at most max|w|/254 per weight, INT4's max|w|/14, i.e. 18x larger; the gloo dry run measured
    # about 1/3 of these bounds.
    "int8-vs-fp": 5e-2,
    "int4-vs-fp": 2.5e-1,
    # llama.cpp with f16 weights: the CPU backend rounds activations to f16 for its f16 dot products,
    # CUDA's kernels compute in f16/f32 too: fp16-level differences, bound as for fp16.
    "gguf-f16": 2e-2,
    # q8_0 weights: CUDA quantizes activations to q8_1 blocks, the CPU to q8_0 blocks (differently
    # rounded int8 activations, 1/127 of a block's maximum each); 5e-2 of the range.
    "gguf-q8_0": 5e-2,
    # RWKV's int8 (the rwkv package's fp16i8): uint8 weights with per-row and per-column range
    # scaling, about 1/256 of a row's range per weight on both sides, arithmetic in fp16 on CUDA and in
    # fp32 on the CPU: the quantization is identical, so the fp16 bound plus room for the int8 matmul
    # done in fp16 there: 3e-2 as for INT8 above.
    "rwkv-i8": 3e-2,
    # LoRA training: relative difference of each step's loss. CUDA trains a bf16 base under autocast
    # (LoRA weights fp32); bf16 logits carry ~4e-3 relative error, the loss (a mean of log-softmaxes) a
    # few times less, and three AdamW steps at lr 1e-2 let it grow a little: 3e-2.
    "lora-bf16": 3e-2,
    # The batched decoders' KV cache against its budget: measured bytes / budget (cuda: what
    # ``torch.cuda.memory_allocated`` grew by after each step, the cache's blocks rounded to 512 B;
    # cpu: the bytes of the tensors the decoder holds). plan_rows promises rows x slot tokens x bytes
    # per token <= budget, so any ratio above 1 is a broken promise; the rounding is < 1e-3 of the
    # budgets used here (two 512-token slots: 0.25 MiB for the CPU's models, 2 MiB for the GPU's).
    "kv-budget": 1.0,
}
# The batched decoders' rows, a prefix-cache hit's rows and Model.embed take the bound of the
# dtype they compute in: each is compared with CPU fp32 on the same weights and the same ids (the
# tokens the device side chose), so only arithmetic differs, as for a single run. A batch adds
# matrix products over several rows and attention over a padded, masked cache (another summation
# order: ~1e-7 relative in fp32, the dtype's rounding in fp16/bf16); a hit adds keys and values
# computed in another prompt's chunks (the same); an embedding is the mean of the final-norm hidden
# states the logits are one matrix product of, so its rounding is that of the logits or less.
# A batching bug (a row at another position, attending to padding or to another row) moves a row
# by a sizeable part of its range: --perturb decodes every row one position off, which the fp32
# batch paths report as FAIL by 400x (ChatGLM2, GLM-130B: 4e-2 of the range) to 6,000x (LLaMA)
# their bound; the 16-bit bounds are too loose to see the smaller of these, hence the fp32 paths.

#: H200 device-to-device copy rate measured on the device machines (bytes read + written per second).
H200_COPY_BYTES_PER_S = 4.3e12
PROMPTS = ("The quick brown fox jumps over the lazy dog", "Once upon a time there lived a small robot")
#: Eight prompts of different lengths for the batched decoders (PROMPTS first); the logits check
#: uses four of them and a long one (:func:`long_text`), the speed check all eight.
BATCH_PROMPTS = (*PROMPTS, "Hello", "List three colours of the rainbow:", "def fib(n):",
                 "In the summer of 1969 the first people walked on the moon, and the world watched as",
                 "Dear Sir or Madam, I am writing to", "2 + 2 =")
#: Tokens of the long prompt in a batch (the brief of the batched paths: one row >= 1,024 tokens).
LONG_TOKENS = 1024


@dataclass
class Result:
    name: str
    status: str  # PASS FAIL SKIP ERROR
    diff: float | None = None
    bound: float | None = None
    bound_kind: str | None = None
    tokens_per_s: float | None = None
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        diff = "-" if self.diff is None else f"{self.diff:.2e}"
        bound = "-" if self.bound is None else f"{self.bound:.1e}"
        tps = "-" if self.tokens_per_s is None else f"{self.tokens_per_s:.1f}"
        why = self.detail.get("reason") or self.detail.get("error") or ""
        return (f"{self.status:5s} {self.name:40s} diff {diff:>9s} (bound {bound:>7s})  tok/s {tps:>8s}  "
                f"{self.seconds:5.1f}s  {why}".rstrip())


def rel_diff(got: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> float:
    """Largest |got - ref| over every row, relative to the reference's logit range."""
    worst = 0.0
    for g, r in zip(got, ref, strict=True):
        g64, r64 = np.asarray(g, dtype=np.float64), np.asarray(r, dtype=np.float64)
        if g64.shape != r64.shape:
            raise ValueError(f"logit shapes differ: {g64.shape} vs {r64.shape}")
        if not np.isfinite(g64).all():
            return float("inf")
        worst = max(worst, float(np.abs(g64 - r64).max() / max(r64.max() - r64.min(), 1e-30)))
    return worst


# ---- the planner, wherever it lives ---------------------------------------------------------------
def planner_estimate(model: str | Path, *, bits: int | None, seq: int, dtype_bytes: int,
                     offload_layers: int = 0) -> dict[str, Any]:
    """The planner's predicted bytes per GPU for one rank (TP=1), without its fixed runtime reserve
    (``max_memory_allocated`` does not see the CUDA context).

    The planner is moving from the GLM-130B plugin into the core: this tries the core's
    ``openllm_hub.core.plan`` first (the model's shapes from its family's ``memory`` hook, found
    through the public ``openllm_hub.detect``), then the plugin's ``planner.resolve_spec``; it
    returns ``{"error": ...}`` when neither can describe the model (a report, not a failure)."""
    import importlib

    errors = []

    def core_spec(mod: Any) -> Any:
        from openllm_hub import detect

        fam, det = detect(Path(model))
        memory = getattr(fam, "memory", None)
        if memory is None:
            raise LookupError(f"the {fam.name} family has no memory hook")
        return memory(Path(model), det.format)

    for module_name, spec_of in (("openllm_hub.core.plan", core_spec),):
        try:
            mod = importlib.import_module(module_name)
            spec = spec_of(mod)
            est = mod.estimate(spec, tp=1, bits=bits, offload_layers=offload_layers, seq=seq,
                               dtype_bytes=dtype_bytes, reserve_gib=0.0)
            return {"planner": module_name, "predicted_bytes": int(est.total_bytes),
                    "weights_bytes": int(est.weights_bytes), "kv_cache_bytes": int(est.kv_cache_bytes),
                    "activation_bytes": int(est.activation_bytes)}
        except Exception as exc:  # noqa: BLE001 - the other location may work
            errors.append(f"{module_name}: {type(exc).__name__}: {exc}")
    return {"error": "; ".join(errors)}


# ---- plugins without installed metadata ------------------------------------------------------------
PLUGINS = {"llama": "openllm_hub_llama.plugin", "chatglm": "openllm_hub_chatglm.plugin",
           "rwkv": "openllm_hub_rwkv.plugin", "glm130b": "openllm_hub_glm130b.plugin"}


def ensure_plugin_entry_points(work: Path) -> None:
    """On the GPU machine the packages run from their ``src`` folders (PYTHONPATH), without installed
    metadata, so ``openllm_hub`` would find no plugin entry points. Write a metadata-only
    distribution declaring them, on ``sys.path`` and ``PYTHONPATH`` (for spawned GLM-130B ranks)."""
    from importlib import metadata

    have = {ep.name for ep in metadata.entry_points(group="openllm_hub")}
    missing = {k: v for k, v in PLUGINS.items() if k not in have}
    if not missing:
        return
    site = work / "meta"
    info = site / "openllm_hub_gpu_check_plugins-0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: openllm-hub-gpu-check-plugins\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[openllm_hub]\n" + "".join(f"{k} = {v}\n" for k, v in missing.items()))
    sys.path.append(str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(site)) if p)
    import importlib

    importlib.invalidate_caches()


# ---- the check ------------------------------------------------------------------------------------
class Check:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        import torch

        self.args = args
        self.cpu = bool(args.cpu)
        self.work = work
        self.torch = torch
        self.gpus = 0 if self.cpu else torch.cuda.device_count()
        self.dev = "cpu" if self.cpu else "cuda:0"
        #: the 16-bit type a "fp16" path uses: CPUs have no fast fp16 kernels, bf16 stands in
        self.half = "bf16" if self.cpu else "fp16"
        self.results: list[Result] = []
        self.new_tokens = 8 if self.cpu else 32
        self.only = [s.strip() for s in (args.only or "").split(",") if s.strip()]
        # sizes: tiny on the CPU, small on the GPU (a few seconds each)
        self.h = 64 if self.cpu else 256
        self.layers = 2 if self.cpu else 4
        #: after this many seconds the remaining paths SKIP, so the report is written inside the
        #: device tool's 10-minute command limit whatever happens
        self.deadline: float = time.perf_counter() + float(args.budget_s)

    # -- bookkeeping --
    def wanted(self, name: str) -> bool:
        return not self.only or any(name.startswith(o) for o in self.only)

    def wants_phase(self, prefix: str) -> bool:
        """Whether any wanted path can start with ``prefix`` (a phase's paths all do)."""
        return not self.only or any(o.startswith(prefix) or prefix.startswith(o) for o in self.only)

    def out_of_time(self) -> bool:
        return time.perf_counter() > self.deadline

    def record(self, r: Result) -> Result:
        self.results.append(r)
        print(r.line(), flush=True)
        return r

    def run(self, name: str, fn: Callable[[], Result]) -> None:
        if not self.wanted(name):
            return
        if self.out_of_time():
            self.skip(name, f"time budget of {self.args.budget_s} s spent (--budget-s)")
            return
        t0 = time.perf_counter()
        try:
            r = fn()
        except Exception as exc:  # noqa: BLE001 - one broken path must not hide the others
            r = Result(name, "ERROR", detail={"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
                                              "traceback": traceback.format_exc(limit=-4)})
        r.name = name
        r.seconds = round(time.perf_counter() - t0, 2)
        self.record(r)

    def skip(self, name: str, reason: str) -> None:
        if self.wanted(name):
            self.record(Result(name, "SKIP", detail={"reason": reason}))

    def compare(self, got: Sequence[np.ndarray], ref: Sequence[np.ndarray], kind: str, **detail: Any) -> Result:
        d = rel_diff(got, ref)
        bound = BOUNDS[kind]
        return Result("", "PASS" if d <= bound else "FAIL", d, bound, kind, detail.pop("tokens_per_s", None),
                      detail=detail)

    def compare_probe(self, p: dict[str, Any], ref: Sequence[np.ndarray], kind: str, **detail: Any) -> Result:
        """:meth:`compare` for a :meth:`probe` result, with its speed, tokens and device info."""
        return self.compare(p["logits"], ref, kind, tokens_per_s=p["tokens_per_s"], generated=p["generated"],
                            info=p["info"], load_peak=p["load_peak"], **detail)

    # -- memory --
    def mem_reset(self) -> int:
        """Start counting the peak from here; returns the bytes allocated now (the baseline)."""
        if self.cpu:
            return 0
        import gc

        gc.collect()  # a closed model's tensors must not count towards the next one
        self.torch.cuda.synchronize()
        self.torch.cuda.reset_peak_memory_stats()
        return int(self.torch.cuda.memory_allocated())

    def mem_peak(self, baseline: int = 0) -> int | None:
        """Peak bytes allocated since :meth:`mem_reset`, above ``baseline``."""
        if self.cpu:
            return None
        self.torch.cuda.synchronize()
        return int(self.torch.cuda.max_memory_allocated()) - baseline

    def memory_detail(self, model_src: Path, peak: int | None, *, bits: int | None, seq: int, dtype: str,
                      offload_layers: int = 0) -> dict[str, Any]:
        est = planner_estimate(model_src, bits=bits, seq=seq, dtype_bytes=4 if dtype == "fp32" else 2,
                               offload_layers=offload_layers)
        out: dict[str, Any] = {"planner": est, "max_memory_allocated": peak}
        if peak and est.get("predicted_bytes"):
            out["predicted_over_measured"] = round(est["predicted_bytes"] / peak, 3)
        return out

    # -- a model through the public API --
    def probe(self, src: Path, ids: Sequence[Sequence[int]], *, speed: bool = True, **load_kw: Any) -> dict[str, Any]:
        """Logits of ``ids``; with ``speed``, greedy decode tokens/s; peak memory after loading
        (the steady state: weights resident, then the largest step)."""
        from openllm_hub import load

        baseline = self.mem_reset()
        with load(src, **load_kw) as m:
            return self.measure(m, ids, speed=speed, baseline=baseline)

    def measure(self, m: Any, ids: Sequence[Sequence[int]], *, speed: bool = True, baseline: int = 0) -> dict[str, Any]:
        """:meth:`probe` on a loaded model (``baseline``: the bytes allocated before it was loaded)."""
        load_peak = self.mem_peak(baseline)
        self.mem_reset()  # the peak of use: resident weights plus the largest step
        logits = [np.asarray(m.logits(list(s)), dtype=np.float32) for s in ids]
        tps, generated = None, 0
        if speed:
            if not self.cpu:  # first decode steps pay for kernel selection and caches
                m.generate(PROMPTS[1], max_new_tokens=2, temperature=0.0, seed=0)
            out = m.generate(PROMPTS[0], max_new_tokens=self.new_tokens, temperature=0.0, seed=0)
            tps, generated = round(out.timings.generation_tokens_per_second, 1), len(out.token_ids)
        peak = self.mem_peak(baseline)
        return {"logits": logits, "tokens_per_s": tps, "generated": generated, "load_peak": load_peak, "peak": peak,
                "info": {k: v for k, v in m.info.as_dict().items() if k in ("device", "dtype", "engine", "extra")}}

    def tokenize(self, src: Path, **load_kw: Any) -> list[list[int]]:
        from openllm_hub import load

        with load(src, device="cpu", **load_kw) as m:
            return [list(m.tokenize(p)) for p in PROMPTS]

    # -- several sequences at once: batched decoders, the prefix cache, the KV budget --
    def greedy(self, model: Any, n: int) -> Any:
        """A greedy :class:`GenerationConfig` of ``n`` new tokens for ``model``'s decoders."""
        from openllm_hub.plugin import GenerationConfig

        return GenerationConfig.build(model.generation_defaults, temperature=0.0, repeat_penalty=1.0, seed=0,
                                      max_new_tokens=n).with_seed()

    def decode(self, dec: Any, prompts: Sequence[Sequence[int]], config: Any, n: int, *,
               late: int | None = None, cancel: int | None = None) -> tuple[dict[int, list[np.ndarray]],
                                                                           dict[int, list[int]], int]:
        """Run a batched decoder made with ``keep_logits=True`` over ``prompts`` (key = index) until
        each has ``n`` tokens: prompt ``late`` joins at step 2 (into a running batch), prompt
        ``cancel`` leaves at step ``n // 2`` (its row is dropped while the others run on). Returns
        the logits rows each sequence sampled from, its tokens and the most rows at once."""
        generated: dict[int, list[int]] = {k: [] for k in range(len(prompts))}
        running = set(generated)
        most_rows = 0
        try:
            for key, ids in enumerate(prompts):
                if key != late:
                    dec.join(key, list(ids), config)
            for step in range(n + 16):  # llama.cpp reads a long prompt over several steps
                if step == 2 and late is not None:
                    dec.join(late, list(prompts[late]), config)
                if step == n // 2 and cancel is not None and cancel in running:
                    dec.leave(cancel)
                    running.discard(cancel)
                for key, token in dec.step().items():
                    if not isinstance(token, int):
                        raise RuntimeError(f"sequence {key} ended early in the batch: {token!r}")
                    generated[key].append(int(token))
                    if len(generated[key]) >= n:
                        dec.leave(key)
                        running.discard(key)
                rows_now = getattr(dec, "rows", None)  # llama.cpp's decoder: its running sequences
                most_rows = max(most_rows, len(getattr(dec, "_seqs", {})) if rows_now is None else int(rows_now))
                if not running:
                    break
            if running:
                raise RuntimeError(f"sequences {sorted(running)} did not finish in {n + 16} steps")
            rows = {k: [np.asarray(r, dtype=np.float32) for r in v] for k, v in dec.logits.items()}
        finally:
            dec.close()
        return rows, generated, most_rows

    @staticmethod
    def rows_alone(ref_model: Any, prompts: Sequence[Sequence[int]], generated: dict[int, list[int]]
                   ) -> dict[int, list[np.ndarray]]:
        """The logits rows ``ref_model`` gives each sequence alone (``Model.logits`` over its prompt
        and tokens, one pass), by key as :meth:`decode` returns them."""
        out = {}
        for key, ids in enumerate(prompts):
            gen = generated[key]
            full = np.asarray(ref_model.logits([*ids, *gen[:-1]]), dtype=np.float32)
            out[key] = [row.copy() for row in full[len(ids) - 1:]]
        return out

    def batch_speed(self, m: Any) -> dict[str, Any]:
        """Aggregate decode tokens/s of 8 sequences in one batch against 1 (``generate_batch``,
        greedy, ``self.new_tokens`` each; wall time, prompt reading included; no bound)."""
        kw: dict[str, Any] = {"max_new_tokens": self.new_tokens, "temperature": 0.0, "repeat_penalty": 1.0, "seed": 0}
        if not self.cpu:  # first steps pay for kernel selection
            m.generate_batch(list(BATCH_PROMPTS), slots=8, **{**kw, "max_new_tokens": 2})
        rate = {}
        for k in (1, 8):
            t0 = time.perf_counter()
            done = m.generate_batch(list(BATCH_PROMPTS[:k]), slots=k, **kw)
            rate[k] = sum(len(c.token_ids) for c in done) / (time.perf_counter() - t0)
        return {"tokens_per_s_1": round(rate[1], 1), "tokens_per_s_8": round(rate[8], 1),
                "speedup_8_vs_1": round(rate[8] / rate[1], 2)}

    def batch_per_dtype(self, src: Path, ref_model: Any, make: Callable[[Any, int], Any], names: Sequence[str],
                        **load_kw: Any) -> None:
        """:meth:`batch_check` of ``src`` loaded on the device in fp32, then in the 16-bit dtype
        (``names``: the two paths' names), against ``ref_model`` (CPU fp32)."""
        from openllm_hub import load

        for name, dt in zip(names, ("fp32", self.half), strict=True):
            def batch(dt: str = dt) -> Result:
                with load(src, device=self.dev, dtype=dt, **load_kw) as m:
                    return self.batch_check(m, ref_model, make, dt)
            self.run(name, batch)

    def batch_check(self, m: Any, ref_model: Any, make: Callable[[Any, int], Any], kind: str,
                    speed: bool = True) -> Result:
        """Four short prompts and one of >= LONG_TOKENS tokens (joining late) in one decoder of ``m``
        (one more leaves early): every row it sampled from against ``ref_model`` (CPU fp32, same
        weights) on the same sequence alone. With ``--perturb`` each row is decoded one position
        further on (the negative control of a batching bug)."""
        n = self.new_tokens
        prompts = [list(m.tokenize(p)) for p in BATCH_PROMPTS[2:6]]
        prompts.append(list(m.tokenize(long_text(m))))
        dec = make(m, len(prompts))
        if self.args.perturb and hasattr(dec, "_decode"):  # the torch decoders (RowBatchDecoder)
            shift_positions(dec)
        rows, generated, most = self.decode(dec, prompts, self.greedy(m, n), n, late=len(prompts) - 1, cancel=1)
        alone = self.rows_alone(ref_model, prompts, generated)
        keys = range(len(prompts))
        got = [r for k in keys for r in rows[k]]
        ref = [r for k in keys for r in alone[k]]
        agree = float(np.mean([int(np.argmax(a)) == int(np.argmax(b)) for a, b in zip(got, ref, strict=True)]))
        detail: dict[str, Any] = {"prompt_tokens": [len(p) for p in prompts], "rows_checked": len(got),
                                  "most_rows_at_once": most, "greedy_agreement_with_cpu": round(agree, 4),
                                  "worst_per_sequence": [rel_diff(rows[k], alone[k]) for k in keys]}
        if self.args.perturb and hasattr(dec, "_decode"):
            detail["perturbed"] = "each row decoded one position further on (negative control)"
        tps = None
        if speed:
            detail.update(self.batch_speed(m))
            tps = detail["tokens_per_s_8"]
        return self.compare(got, ref, kind, tokens_per_s=tps, **detail)

    def prefix_check(self, m: Any, ref_model: Any, make: Callable[[Any, int], Any], kind: str) -> Result:
        """A prompt that shares a long prefix (>= 2 of the store's 64-id blocks) with one read before
        reuses its stored keys and values (host RAM, copied back to the device): the rows it samples
        from against ``ref_model`` (CPU fp32, cold) and ``m``'s own cold ``Model.logits``; the hit
        counted on the batched decoder's path and on the single path (``generate``)."""
        n = self.new_tokens
        system = long_text(m, 160)
        asks = ("Question: what colour is the sky?", "Question: name a prime number.", "Question: who are you?")
        a, b = (list(m.tokenize(f"{system} {q}")) for q in asks[:2])

        def stats() -> dict[str, int]:
            st = m.prefix_cache_stats()
            if st is None:
                raise RuntimeError("this engine keeps no prefix cache")
            return dict(st)

        self.decode(make(m, 1), [a], self.greedy(m, 2), 2)  # read and stored
        stored = stats()
        rows, generated, _ = self.decode(make(m, 1), [b], self.greedy(m, n), n)
        hit = stats()
        m.generate(f"{system} {asks[2]}", max_new_tokens=2, temperature=0.0, seed=0)  # the single path
        single = stats()
        ref = self.rows_alone(ref_model, [b], generated)[0]
        cold = self.rows_alone(m, [b], generated)[0]
        r = self.compare(rows[0], ref, kind, prompt_tokens=len(b), stored_entries=stored["entries"],
                         hits_batch=hit["hits"] - stored["hits"], hits_single=single["hits"] - hit["hits"],
                         tokens_reused=hit["tokens_reused"] - stored["tokens_reused"],
                         vs_device_cold=rel_diff(rows[0], cold))
        if r.status == "PASS" and (r.detail["hits_batch"] < 1 or r.detail["hits_single"] < 1):
            r.status, r.detail["reason"] = "FAIL", "no prefix-cache hit (see hits_batch, hits_single)"
        return r

    def kv_in_use(self, dec: Any, baseline: int) -> int:
        """Bytes the decoder's cache holds now: on CUDA what ``memory_allocated`` grew by since
        ``baseline``; on the CPU the bytes of the tensors reachable from the decoder (not its model)."""
        if not self.cpu:
            self.torch.cuda.synchronize()
            return int(self.torch.cuda.memory_allocated()) - baseline
        return tensor_bytes(dec, skip=(getattr(dec, "model", None),))

    def memory_check(self, m: Any, make: Callable[[Any, int], Any]) -> Result:
        """The torch batched decoders' KV budget on the device: by default half the free memory of
        the model's device (``torch.cuda.mem_get_info`` on CUDA), which must be found for the
        model's device name; then a budget of two 512-token slots for eight sequences
        (``batch_kv_bytes``, what the ``batch_kv_mib`` load option sets): at most
        ``plan_rows``' rows run at once, the others wait and all finish, and the cache stays
        within the budget (:data:`BOUNDS` ``kv-budget``)."""
        from openllm_hub.engines.torch_batch import MIN_SLOT_TOKENS, kv_budget_bytes, plan_rows
        from openllm_hub.plugin import available_ram

        n = self.new_tokens
        per_token = int(m.info.extra["kv_bytes_per_token"])
        context = int(m.info.context_length)
        saved = m.batch_kv_bytes
        try:
            m.batch_kv_bytes = None  # the default: half the free memory, read when a decoder is made
            free = int(self.torch.cuda.mem_get_info(0)[0]) if not self.cpu else available_ram()
            default = kv_budget_bytes(m.info.device)
            dec = make(m, 8)
            default_plan = (dec.max_rows, dec.slot_tokens)
            dec.close()
            budget = 2 * MIN_SLOT_TOKENS * per_token  # in bytes (batch_kv_mib's MiB may hold more rows of a tiny model)
            m.batch_kv_bytes = budget
            want_rows, want_slot = plan_rows(budget, per_token, context, 8)
            self.mem_reset()
            baseline = 0 if self.cpu else int(self.torch.cuda.memory_allocated())
            dec = make(m, 8)
            plan = (dec.max_rows, dec.slot_tokens)
            prompts = [list(m.tokenize(p)) for p in BATCH_PROMPTS]
            config = self.greedy(m, n)
            for key, ids in enumerate(prompts):
                dec.join(key, ids, config)
            counts = dict.fromkeys(range(len(prompts)), 0)
            most_rows = used = 0
            for _ in range(len(prompts) * (n + 2)):
                for key, token in dec.step().items():
                    if not isinstance(token, int):
                        raise RuntimeError(f"sequence {key} ended early: {token!r}")
                    counts[key] += 1
                    if counts[key] >= n:
                        dec.leave(key)
                most_rows = max(most_rows, dec.rows)
                used = max(used, self.kv_in_use(dec, baseline))
                if all(c >= n for c in counts.values()):
                    break
            dec.close()
            peak = self.mem_peak(baseline)
        finally:
            m.batch_kv_bytes = saved
        half_free = None if free is None else free // 2
        problems = []
        if default is None:
            problems.append(f"no default budget for device {m.info.device!r}")
        elif not self.cpu and half_free and abs(default - half_free) > 0.05 * half_free:
            problems.append(f"default budget {default} is not half the free memory ({half_free})")
        if plan != (want_rows, want_slot) or most_rows != want_rows or not want_rows or want_rows >= len(prompts):
            problems.append(f"rows {most_rows} at most, plan {plan}, plan_rows {(want_rows, want_slot)}")
        if not all(c >= n for c in counts.values()):
            problems.append(f"not every sequence finished: {counts}")
        ratio, bound = used / budget, BOUNDS["kv-budget"]
        detail = {"device": m.info.device, "kv_bytes_per_token": per_token, "default_budget": default,
                  "half_free": half_free, "default_plan": default_plan, "budget": budget, "plan": plan,
                  "most_rows": most_rows, "kv_bytes_used": used, "peak_above_weights": peak}
        if problems:
            detail["reason"] = "; ".join(problems)
        return Result("", "PASS" if ratio <= bound and not problems else "FAIL", ratio, bound, "kv-budget",
                      detail=detail)

    def embed_check(self, src: Path, dtype: str, *, dev_src: Path | None = None, **load_kw: Any) -> Result:
        """``Model.embed`` (mean-pooled final-norm hidden states) of PROMPTS on the device in
        ``dtype`` against CPU fp32 on the same weights (``dev_src``: the device side's, --perturb)."""
        from openllm_hub import load

        with load(src, device="cpu", dtype="fp32", **load_kw) as m:
            ref = [np.asarray(v) for v in m.embed(list(PROMPTS))]
        with load(dev_src or src, device=self.dev, dtype=dtype, **load_kw) as m:
            got = [np.asarray(v) for v in m.embed(list(PROMPTS))]
        kind = dtype
        cos = min(float(g @ r / (np.linalg.norm(g) * np.linalg.norm(r))) for g, r in zip(got, ref, strict=True))
        return self.compare(got, ref, kind, dims=len(ref[0]), min_cosine=round(cos, 6))

    # ====================================================================================== paths
    def llama(self) -> None:
        if not (self.wants_phase("llama-hf") or self.wants_phase("llama.cpp")):
            return
        from openllm_hub_llama.tiny import make_tiny_hf

        src = self.work / "llama-hf"
        make_tiny_hf(src, hidden_size=self.h, intermediate_size=self.h * 11 // 4, num_layers=self.layers,
                     num_heads=4, num_kv_heads=2, init_std=2.0 / self.h ** 0.5, seed=1)
        dev_src = src
        if self.args.perturb:  # negative control: the device side reads one tensor changed
            dev_src = perturbed_copy(src, self.work / "llama-hf-perturbed")
        ids = self.tokenize(src, engine="transformers")
        seq = max(map(len, ids)) + self.new_tokens
        ref = self.probe(src, ids, engine="transformers", device="cpu", dtype="fp32", speed=False)["logits"]
        dtypes = ("fp32", "bf16") if self.cpu else ("fp32", "fp16", "bf16")
        for dt in dtypes:
            def one(dt: str = dt) -> Result:
                p = self.probe(dev_src, ids, engine="transformers", device=self.dev, dtype=dt)
                return self.compare_probe(p, ref, dt,
                                          memory=self.memory_detail(src, p["peak"], bits=None, seq=seq, dtype=dt))
            self.run(f"llama-hf/{dt} device_map={self.dev}", one)
        name = "llama-hf/device_map=auto over 2 GPUs"
        if self.cpu or self.gpus >= 2:
            def split() -> Result:
                dev = "cpu" if self.cpu else "cuda:0,1"
                p = self.probe(dev_src, ids, engine="transformers", device=dev, dtype=self.half)
                return self.compare_probe(p, ref, self.half)
            self.run(name, split)
        else:
            self.skip(name, f"needs 2 GPUs, {self.gpus} visible")
        self.llama_hf_batch(src, dev_src)
        self.llama_cpp(src, ids)

    def llama_hf_batch(self, src: Path, dev_src: Path) -> None:
        """HF LLaMA's batched decoder (HFBatchDecoder) in fp32 and the 16-bit dtype, its prefix
        cache, its KV budget, and ``Model.embed`` on the device."""
        from openllm_hub_llama.engine_hf import HFBatchDecoder

        from openllm_hub import load

        def make(m: Any, slots: int) -> Any:
            return HFBatchDecoder(m, slots=slots, keep_logits=True)

        hf: dict[str, Any] = {"engine": "transformers"}
        batched = [f"llama-hf/batch {dt}" for dt in ("fp32", self.half)]
        prefix, memory = f"llama-hf/prefix-cache hit {self.half}", f"llama-hf/batch memory budget {self.half}"
        if any(self.wanted(n) for n in (*batched, prefix, memory)):
            with load(src, device="cpu", dtype="fp32", **hf) as ref_model:
                self.batch_per_dtype(src, ref_model, make, batched, **hf)

                def hit() -> Result:
                    with load(dev_src, device=self.dev, dtype=self.half, **hf) as m:
                        return self.prefix_check(m, ref_model, make, self.half)
                self.run(prefix, hit)

            def budget() -> Result:
                with load(src, device=self.dev, dtype=self.half, **hf) as m:
                    return self.memory_check(m, make)
            self.run(memory, budget)
        self.run(f"llama-hf/embed {self.half}", lambda: self.embed_check(src, self.half, dev_src=dev_src, **hf))

    def llama_cpp(self, hf: Path, ids: list[list[int]]) -> None:
        from openllm_hub import convert

        if not self.wants_phase("llama.cpp"):
            return
        try:
            from openllm_hub.engines.llama_cpp import capabilities

            caps = capabilities()
        except ImportError as exc:
            for name in ("llama.cpp/-ngl 0,half,all", "llama.cpp/batch f16 -ngl all"):
                self.skip(name, f"llama-cpp-python cannot be imported: {exc}")
            return
        if not self.cpu and not caps.get("gpu_offload"):
            for name in ("llama.cpp/-ngl 0,half,all", "llama.cpp/batch f16 -ngl all"):
                self.skip(name, "llama-cpp-python here was built without CUDA "
                          "(run scripts/gpu_build_llama_cpp.sh first)")
            return
        n_layers = self.layers
        for outtype in ("f16", "q8_0"):
            gguf = self.work / f"llama-{outtype}.gguf"
            convert(hf, gguf, to="gguf", outtype=outtype)
            ref = self.probe(gguf, ids, device="cpu", speed=False)["logits"]
            layer_counts: dict[str, int | None] = ({"0": 0, "half": n_layers // 2, "all": -1, "auto": None}
                                                   if outtype == "f16" else {"all": -1})
            for label, ngl in layer_counts.items():
                def one(ngl: int | None = ngl, gguf: Path = gguf, outtype: str = outtype,
                        ref: list[np.ndarray] = ref) -> Result:
                    kw: dict[str, Any] = {"device": "cpu"} if self.cpu else {"device": "cuda"}
                    if ngl is not None and not self.cpu:
                        kw["gpu_layers"] = ngl
                    p = self.probe(gguf, ids, **kw)
                    return self.compare_probe(p, ref, f"gguf-{outtype}")
                self.run(f"llama.cpp/{outtype} -ngl {label}", one)
        self.run("llama.cpp/batch f16 -ngl all", lambda: self.llama_cpp_batch(self.work / "llama-f16.gguf"))

    def llama_cpp_batch(self, gguf: Path) -> Result:
        """llama.cpp's batched decoder (its own context over the model, every layer offloaded) against
        the CPU run of the same GGUF, sequence by sequence."""
        from openllm_hub import load
        from openllm_hub.engines.llama_cpp_batch import LlamaCppBatchDecoder

        def make(m: Any, slots: int) -> Any:
            return LlamaCppBatchDecoder(m, slots, keep_logits=True)

        kw: dict[str, Any] = {"device": "cpu"} if self.cpu else {"device": "cuda", "gpu_layers": -1}
        with load(gguf, device="cpu") as ref_model, load(gguf, **kw) as m:
            return self.batch_check(m, ref_model, make, "gguf-f16")

    def chatglm(self) -> None:
        """ChatGLM2 in every dtype and INT8/INT4; ChatGLM-6B (v1: other blocks, 2D rotary) in fp16 and
        INT4. The quantized paths compare with the CPU fp32 run of the same quantization."""
        from openllm_hub_chatglm.tiny import build_checkpoint

        variants = {"chatglm2": (("bf16",) if self.cpu else ("fp16", "bf16", "fp32"), ("int8", "int4")),
                    "chatglm": ((self.half,), ("int4",))}
        for variant, (dtypes, quants) in variants.items():
            if not self.wants_phase(f"{variant}/"):
                continue
            # ChatGLM2's batched paths read a prompt of >= 1,024 tokens
            src = build_checkpoint(self.work / variant, variant, hidden=self.h, layers=self.layers, heads=4,
                                   kv_groups=2, seq_length=2048 if variant == "chatglm2" else 256)
            ids = self.tokenize(src)
            seq = max(map(len, ids)) + self.new_tokens
            ref = self.probe(src, ids, device="cpu", dtype="fp32", speed=False)["logits"]
            for dt in dtypes:
                def one(dt: str = dt, src: Path = src, ids: list[list[int]] = ids, seq: int = seq,
                        ref: list[np.ndarray] = ref) -> Result:
                    p = self.probe(src, ids, device=self.dev, dtype=dt)
                    return self.compare_probe(p, ref, dt, memory=self.memory_detail(
                        src, p["peak"], bits=None, seq=seq, dtype=dt))
                self.run(f"{variant}/{dt}", one)
            for q in quants:
                if not self.wanted(f"{variant}/{q}"):
                    continue
                qref = self.probe(src, ids, device="cpu", dtype="fp32", quantize=q, speed=False)["logits"]

                def quant(q: str = q, qref: list[np.ndarray] = qref, src: Path = src, ids: list[list[int]] = ids,
                          seq: int = seq) -> Result:
                    p = self.probe(src, ids, device=self.dev, dtype=self.half, quantize=q)
                    kind = q if self.half == "fp16" else f"{q}-bf16"
                    return self.compare_probe(p, qref, kind, memory=self.memory_detail(
                        src, p["peak"], bits=int(q[3:]), seq=seq, dtype="fp16"))
                self.run(f"{variant}/{q} {self.half}", quant)
            if variant == "chatglm2":
                self.chatglm2_batch(src)

    def chatglm2_batch(self, src: Path) -> None:
        """ChatGLM2's batched decoder (ChatGLMBatchDecoder) in fp32 and the 16-bit dtype, its prefix
        cache, its KV budget, and ``Model.embed`` on the device."""
        from openllm_hub_chatglm.engine_torch import ChatGLMBatchDecoder

        from openllm_hub import load

        def make(m: Any, slots: int) -> Any:
            return ChatGLMBatchDecoder(m, slots=slots, keep_logits=True)

        batched = [f"chatglm2/batch {dt}" for dt in ("fp32", self.half)]
        prefix, memory = f"chatglm2/prefix-cache hit {self.half}", f"chatglm2/batch memory budget {self.half}"
        if any(self.wanted(n) for n in (*batched, prefix, memory)):
            with load(src, device="cpu", dtype="fp32") as ref_model:
                self.batch_per_dtype(src, ref_model, make, batched)

                def hit() -> Result:
                    with load(src, device=self.dev, dtype=self.half) as m:
                        return self.prefix_check(m, ref_model, make, self.half)
                self.run(prefix, hit)

            def budget() -> Result:
                with load(src, device=self.dev, dtype=self.half) as m:
                    return self.memory_check(m, make)
            self.run(memory, budget)
        self.run(f"chatglm2/embed {self.half}", lambda: self.embed_check(src, self.half))

    def rwkv(self) -> None:
        from openllm_hub_rwkv.tiny import Version, build_checkpoint

        if not self.wants_phase("rwkv"):
            return
        gpu = {"cuda fp16": "fp16", "cuda fp32": "fp32", "cuda fp16i8": "rwkv-i8",
               "cuda fp16 *1 -> cpu fp32": "fp16", "cuda fp16 *1+": "fp16"}
        # CPU stand-ins (fp16 has no CPU kernels there; streaming needs CUDA): same split and precision shape
        cpu = {"cuda fp16": "cpu bf16", "cuda fp32": "cpu fp32", "cuda fp16i8": "cpu fp32i8",
               "cuda fp16 *1 -> cpu fp32": "cpu bf16 *1 -> cpu fp32", "cuda fp16 *1+": "cpu bf16 *1 -> cpu bf16"}
        versions: tuple[Version, ...] = ("4", "7") if self.cpu else ("4", "6", "7")
        for version in versions:
            src = build_checkpoint(self.work / f"rwkv{version}.pth", version, n_layer=self.layers, n_embd=self.h,
                                   head_size=16 if self.cpu else 64)
            ids = self.tokenize(src)
            ref = self.probe(src, ids, strategy="cpu fp32", device="cpu", speed=False)["logits"]
            for strategy, kind in gpu.items():
                if version == "7" and ("->" in strategy or "+" in strategy or "i8" in strategy):
                    continue  # the plugin refuses splits, streaming and int8 for RWKV-7 (as the package does)
                used = cpu[strategy] if self.cpu else strategy
                if self.cpu and kind == "fp16":
                    kind = "bf16"

                def one(used: str = used, kind: str = kind, src: Path = src, ids: list[list[int]] = ids,
                        ref: list[np.ndarray] = ref) -> Result:
                    p = self.probe(src, ids, strategy=used, device="cpu" if used.startswith("cpu") else "cuda")
                    return self.compare_probe(p, ref, kind, strategy=used, memory=self.memory_detail(
                        src, p["peak"], bits=8 if "i8" in used else None, seq=max(map(len, ids)) + self.new_tokens,
                        dtype="fp32" if kind == "fp32" else "fp16"))
                self.run(f"rwkv{version}/{strategy}", one)

    def glm130b(self) -> None:
        if not self.wants_phase("glm130b"):
            return
        from openllm_hub_glm130b.launch import RunSpec, spawn_many
        from openllm_hub_glm130b.ranks import EngineOptions
        from openllm_hub_glm130b.tiny import build_tiny

        from openllm_hub import load

        hidden = 128 if self.cpu else 512
        src, _full = build_tiny(self.work / "glm130b", tp=2, gain=1.0, hidden=hidden, heads=8,
                                inner=hidden * 8 // 3 // 16 * 16, layers=self.layers, max_seq=2048)
        with load(src, device="cpu") as m:
            ids = tuple(tuple(m.tokenize(p)) for p in PROMPTS)
            ref = [np.asarray(m.logits(list(s)), dtype=np.float32) for s in ids]
        f64 = float64_reference(src, _full, ids)
        qref = {}
        for b in (8, 4):
            with load(src, device="cpu", quantize=f"int{b}") as m:
                qref[b] = [np.asarray(m.logits(list(s)), dtype=np.float32) for s in ids]
        job = MemoryProbeJob(ids=ids, prompts=PROMPTS[:1], max_new_tokens=self.new_tokens)
        half = self.half
        runs = {"fp32": EngineOptions(dtype="fp32"), half: EngineOptions(dtype=half),
                "offload": EngineOptions(dtype=half, offload_layers="all"),
                "int8": EngineOptions(dtype=half, quantize=8), "int4": EngineOptions(dtype=half, quantize=4)}
        if not self.cpu:
            runs["bf16"] = EngineOptions(dtype="bf16")
        # GPU: one rank over NCCL (TP=1), and with several GPUs one rank on each of the most GPUs that
        # split the model evenly (2, 4 or 8: heads, MLP and vocabulary divide by 8; the ranks re-split the
        # TP=2 checkpoint themselves). CPU mode: 1 and 2 ranks over gloo.
        multi = [w for w in (8, 4, 2) if w <= self.gpus][:1]
        worlds = [1, 2] if self.cpu else [1, *multi]
        seq = max(map(len, ids)) + self.new_tokens
        for world in worlds:
            name = f"glm130b/tp{world} {'gloo' if self.cpu else 'nccl'}"
            if not any(self.wanted(f"{name} {k}") for k in runs):
                continue
            if self.out_of_time():
                self.skip(name, f"time budget of {self.args.budget_s} s spent (--budget-s)")
                continue
            t0 = time.perf_counter()
            try:
                results = spawn_many([(RunSpec(str(src), o), job) for o in runs.values()], world,
                                     device="cpu" if self.cpu else "cuda")
            except Exception as exc:  # noqa: BLE001
                self.record(Result(name, "ERROR", detail={"error": f"{type(exc).__name__}: {exc}"[:300],
                                                          "traceback": traceback.format_exc(limit=-4)}))
                continue
            spent = round(time.perf_counter() - t0, 2)
            for (label, opts), res in zip(runs.items(), results, strict=True):
                bits = opts.quantize
                if bits and world == 1:
                    target, kind = qref[bits], (f"int{bits}" if half == "fp16" else f"int{bits}-bf16")
                elif bits:
                    target, kind = ref, f"int{bits}-vs-fp"
                else:
                    target, kind = ref, opts.dtype
                r = self.compare(res["logits"], target, kind, tokens_per_s=round(res["tokens_per_s"][0], 1),
                                 weight_bytes_rank0=res["weight_bytes"],
                                 memory=self.memory_detail(src, res["peak"], bits=bits, seq=seq,
                                                           dtype=opts.dtype,
                                                           offload_layers=self.layers if label == "offload" else 0))
                r.name, r.seconds = f"{name} {label}", spent
                r.detail["seconds_are_for"] = "all runs of these ranks together"
                if label == "fp32":  # and against the plugin's independent float64 numpy forward pass
                    d64 = rel_diff(res["logits"], f64)
                    r.detail["vs_float64_reference"] = d64
                    if d64 > BOUNDS["fp32"]:
                        r.status = "FAIL"
                if self.wanted(r.name):
                    self.record(r)
        if not self.cpu and self.gpus < 2:
            self.skip("glm130b/tp2 nccl (one rank per GPU)", f"needs 2 GPUs, {self.gpus} visible")
        if not self.cpu:
            self.run("glm130b/tp2 on one GPU (NCCL probe)", nccl_two_ranks_one_gpu)

        def in_process() -> Result:
            p = self.probe(src, [list(s) for s in ids], device=self.dev, dtype=self.half)
            return self.compare_probe(p, ref, self.half,
                                      memory=self.memory_detail(src, p["peak"], bits=None, seq=seq, dtype=self.half))
        self.run(f"glm130b/load() {self.dev} {self.half}", in_process)
        self.glm130b_batch(src, ref, ids)

    def glm130b_batch(self, src: Path, ref: list[np.ndarray], ids: Sequence[Sequence[int]]) -> None:
        """GLM-130B's batched decoder (GLM130BBatchDecoder) with one rank in this process, in fp32
        and the 16-bit dtype; ``Model.embed``; and ``load(..., nproc=2)`` (rank 0 in this process,
        one follower process): its logits and its batched decoder over the two ranks."""
        from openllm_hub_glm130b.engine_tp import GLM130BBatchDecoder

        from openllm_hub import load

        def make(m: Any, slots: int) -> Any:
            return GLM130BBatchDecoder(m, keep_logits=True)

        batched = [f"glm130b/batch load() {self.dev} {dt}" for dt in ("fp32", self.half)]
        # two ranks: fp32 over gloo in CPU mode (the tight bound), the serving dtype over NCCL
        dt2 = "fp32" if self.cpu else self.half
        group = f"{'gloo' if self.cpu else 'nccl'} {dt2}"
        tp_load, tp_batch = f"glm130b/load(nproc=2) {group}", f"glm130b/batch nproc=2 {group}"
        if any(self.wanted(n) for n in (*batched, tp_load, tp_batch)):
            with load(src, device="cpu", dtype="fp32") as ref_model:
                self.batch_per_dtype(src, ref_model, make, batched)
                if not self.cpu and self.gpus < 2:
                    for name in (tp_load, tp_batch):
                        self.skip(name, f"needs 2 GPUs, {self.gpus} visible (load(nproc=2) gives rank r the GPU "
                                        "cuda:r)")
                else:
                    self.glm130b_two_ranks(src, ref, ids, ref_model, make, dt2, tp_load, tp_batch)
        self.run(f"glm130b/embed load() {self.dev} {self.half}", lambda: self.embed_check(src, self.half))

    def glm130b_two_ranks(self, src: Path, ref: list[np.ndarray], ids: Sequence[Sequence[int]], ref_model: Any,
                          make: Callable[[Any, int], Any], dt: str, tp_load: str, tp_batch: str) -> None:
        """One ``load(..., nproc=2)`` shared by its two paths (starting the follower is most of
        their time)."""
        from openllm_hub import load

        if not (self.wanted(tp_load) or self.wanted(tp_batch)):
            return
        if self.out_of_time():
            for name in (tp_load, tp_batch):
                self.skip(name, f"time budget of {self.args.budget_s} s spent (--budget-s)")
            return
        threads = self.torch.get_num_threads()  # on the CPU, load(nproc=N) divides this process's threads
        t0 = time.perf_counter()
        try:
            with load(src, device="cpu" if self.cpu else "cuda:0,1", dtype=dt, nproc=2) as m:
                started = round(time.perf_counter() - t0, 2)

                def logits() -> Result:
                    p = self.measure(m, [list(s) for s in ids])
                    return self.compare_probe(p, ref, dt, ranks=m.info.extra.get("tensor_parallel"),
                                              load_seconds=started)
                self.run(tp_load, logits)
                self.run(tp_batch, lambda: self.batch_check(m, ref_model, make, dt))
        except Exception as exc:  # noqa: BLE001 - the ranks could not start: both paths say why
            for name in (tp_load, tp_batch):
                if self.wanted(name) and not any(r.name == name for r in self.results):
                    self.record(Result(name, "ERROR", detail={"error": f"{type(exc).__name__}: {exc}"[:300],
                                                              "traceback": traceback.format_exc(limit=-4)}))
        finally:
            self.torch.set_num_threads(threads)

    def lora(self) -> None:
        if not self.wants_phase("lora"):
            return
        from openllm_hub_llama.lora_train import TrainConfig, train_lora
        from openllm_hub_llama.tiny import make_tiny_hf

        base = make_tiny_hf(self.work / "lora-base", hidden_size=self.h, intermediate_size=self.h * 11 // 4,
                            num_layers=self.layers, num_heads=4, num_kv_heads=2, init_std=2.0 / self.h ** 0.5)
        data = self.work / "alpaca.json"
        data.write_text(json.dumps([{"instruction": f"Name the number after {i}.", "input": "",
                                     "output": f"The next number is {i + 1}."} for i in range(16)]))

        def train(device: str, out: str) -> tuple[list[float], float]:
            cfg = TrainConfig(base=str(base), data=str(data), output=str(self.work / out), r=4, alpha=8.0,
                              dropout=0.0, epochs=1, learning_rate=1e-2, batch_size=4, grad_accum=1,
                              cutoff_len=64, val_size=0, save_steps=0, eval_steps=0, max_steps=3, device=device)
            t0 = time.perf_counter()
            train_lora(cfg, progress=False)
            spent = time.perf_counter() - t0
            log = [json.loads(x) for x in (self.work / out / "train_log.jsonl").read_text().splitlines()]
            return [r["loss"] for r in log if "loss" in r], spent

        ref, _ = train("cpu", "lora-cpu")

        def one() -> Result:
            got, spent = train("cpu" if self.cpu else "cuda", "lora-dev")
            d = max(abs(g - r) / abs(r) for g, r in zip(got, ref, strict=True))
            bound = BOUNDS["lora-bf16"]
            steps_per_s = len(got) / spent
            return Result("", "PASS" if d <= bound else "FAIL", d, bound, "lora-bf16", None,
                          detail={"losses": got, "cpu_losses": ref, "steps_per_s": round(steps_per_s, 2)})
        self.run(f"lora/train 3 steps on {'cpu' if self.cpu else 'cuda'}", one)

    def bandwidth(self) -> None:
        """Decode speed of the largest LLaMA of the run against the copy-bandwidth bound: each decoded
        token reads every weight once, so tokens/s <= bandwidth / weight bytes (KV cache ignored)."""
        if not self.wants_phase("bandwidth"):
            return
        from openllm_hub_llama.tiny import make_tiny_hf

        from openllm_hub import convert

        h, layers = (128, 2) if self.cpu else (self.args.big_hidden, self.args.big_layers)
        inner = (h * 8 // 3 + 127) // 128 * 128
        src = make_tiny_hf(self.work / "llama-big", hidden_size=h, intermediate_size=inner, num_layers=layers,
                           num_heads=max(4, h // 128), init_std=1.0 / h ** 0.5, dtype="float16")
        ids = self.tokenize(src, engine="transformers")
        ref = self.probe(src, ids, engine="transformers", device="cpu", dtype="fp32", speed=False)["logits"]
        params = layers * (4 * h * h + 3 * h * inner) + 2 * 32000 * h
        weight_bytes = 2 * (params - 32000 * h)  # read per token: all but the embedding (one row is looked up)
        # one decoded token moves every weight byte once; the copy rate is the HBM traffic rate (reads
        # and writes counted together), so it bounds reads alone as well
        bound = None if self.cpu else H200_COPY_BYTES_PER_S / weight_bytes
        seq = max(map(len, ids)) + self.new_tokens

        def hf() -> Result:
            p = self.probe(src, ids, engine="transformers", device=self.dev, dtype=self.half)
            r = self.compare_probe(p, ref, self.half, params=params, weight_bytes=weight_bytes,
                                   bandwidth_bound_tokens_per_s=bound,
                                   memory=self.memory_detail(src, p["peak"], bits=None, seq=seq, dtype=self.half))
            if bound and r.tokens_per_s:
                r.detail["fraction_of_bound"] = round(r.tokens_per_s / bound, 4)
            return r
        self.run(f"bandwidth/transformers {self.half} {params / 1e6:.0f}M", hf)

        def gguf() -> Result:
            try:
                from openllm_hub.engines.llama_cpp import capabilities

                caps = capabilities()
            except ImportError as exc:
                return Result("", "SKIP", detail={"reason": f"llama-cpp-python cannot be imported: {exc}"})
            if not self.cpu and not caps.get("gpu_offload"):
                return Result("", "SKIP", detail={"reason": "llama-cpp-python here was built without CUDA "
                                                            "(run scripts/gpu_build_llama_cpp.sh first)"})
            path = self.work / "llama-big-f16.gguf"
            convert(src, path, to="gguf", outtype="f16")
            cref = self.probe(path, ids, device="cpu", speed=False)["logits"]
            p = self.probe(path, ids, **({"device": "cpu"} if self.cpu else {"device": "cuda", "gpu_layers": -1}))
            r = self.compare_probe(p, cref, "gguf-f16", bandwidth_bound_tokens_per_s=bound)
            if bound and r.tokens_per_s:
                r.detail["fraction_of_bound"] = round(r.tokens_per_s / bound, 4)
            return r
        self.run(f"bandwidth/llama.cpp f16 {params / 1e6:.0f}M", gguf)


def long_text(model: Any, tokens: int = LONG_TOKENS) -> str:
    """A text that ``model`` reads as at least ``tokens`` ids (its own tokenizer decides how many
    words that takes), within its context with room for the decoded tokens."""
    unit = "the quick brown fox jumps over the lazy dog while a small robot counts the stars. "
    per = max(1, len(model.tokenize(unit, add_special=False)))
    text = unit * (tokens // per + 2)
    while len(model.tokenize(text)) < tokens:
        text += unit * 4
    return text


def shift_positions(dec: Any) -> None:
    """The negative control of a batching bug: ``dec`` (a :class:`RowBatchDecoder`) decodes each
    row one position further on than the row holds, as a wrong padding offset would."""
    decode = dec._decode

    def shifted(tokens: list[int], positions: list[int]) -> Any:
        return decode(tokens, [p + 1 for p in positions])

    dec._decode = shifted


def tensor_bytes(obj: Any, skip: Sequence[Any] = ()) -> int:
    """Bytes of the torch tensors reachable from ``obj`` through attributes, lists, tuples and
    dicts (each storage counted once; ``skip`` and torch modules not entered)."""
    import torch

    seen: set[int] = {id(x) for x in skip if x is not None}
    storages: dict[tuple[str, int], int] = {}
    todo = [obj]
    while todo:
        x = todo.pop()
        if id(x) in seen or x is None or isinstance(x, (str, bytes, int, float, np.ndarray, torch.nn.Module)):
            continue
        seen.add(id(x))
        if isinstance(x, torch.Tensor):
            st = x.untyped_storage()
            storages[(str(x.device), st.data_ptr())] = st.nbytes()
        elif isinstance(x, dict):
            todo += list(x.values())
        elif isinstance(x, (list, tuple, set)):
            todo += list(x)
        else:
            todo += list(getattr(x, "__dict__", {}).values())
            for cls in type(x).__mro__:
                slots = getattr(cls, "__slots__", ())
                todo += [getattr(x, a) for a in ((slots,) if isinstance(slots, str) else slots) if hasattr(x, a)]
    return sum(storages.values())


def float64_reference(src: Path, full: dict[str, Any], ids: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """The GLM-130B plugin's float64 numpy forward pass of the unpartitioned weights."""
    from openllm_hub_glm130b.network.positions import layout_of
    from openllm_hub_glm130b.spec import read_config
    # the float64 oracle is test code: it lives with the plugin's tests, not in the wheel
    oracles = str(Path(__file__).resolve().parents[1] / "plugins" / "glm130b" / "tests")
    if oracles not in sys.path:
        sys.path.insert(0, oracles)
    from glm130b_reference import reference_logits  # type: ignore[import-not-found]

    cfg = read_config(src)
    out = []
    for seq in ids:
        lay = layout_of(seq, cfg.tokenizer.commands)
        out.append(np.asarray(reference_logits(full, cfg, seq, lay.positions(0, len(seq)), lay.context)))
    return out


@dataclass(frozen=True)
class MemoryProbeJob:
    """The GLM-130B plugin's probe (logits, greedy speed, weight bytes) plus the rank's peak CUDA
    memory from the job's start (the weights are resident by then)."""

    ids: tuple[tuple[int, ...], ...] = ()
    prompts: tuple[str, ...] = ()
    max_new_tokens: int = 8

    def __call__(self, model: Any) -> dict[str, Any]:
        import torch
        from openllm_hub_glm130b.jobs import ProbeJob

        cuda = torch.cuda.is_available() and str(model.info.device).startswith("cuda")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        out = ProbeJob(ids=self.ids, prompts=self.prompts, max_new_tokens=self.max_new_tokens)(model)
        if cuda:
            torch.cuda.synchronize()
        out["peak"] = int(torch.cuda.max_memory_allocated()) if cuda else None
        return dict(out)


def _nccl_rank(rank: int, port: int) -> None:
    import torch
    import torch.distributed as dist

    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    t = torch.ones(4, device="cuda:0") * (rank + 1)
    dist.all_reduce(t)
    torch.cuda.synchronize()
    assert float(t[0]) == 3.0
    dist.destroy_process_group()


def nccl_two_ranks_one_gpu() -> Result:
    """Can two NCCL ranks share one GPU? (NCCL usually refuses: "Duplicate GPU detected".) Even when it
    can, the GLM-130B launcher gives rank r the GPU cuda:r, so TP=2 needs two GPUs."""
    from openllm_hub_glm130b.launch import free_port
    from torch.multiprocessing.spawn import start_processes

    try:
        ctx = start_processes(_nccl_rank, args=(free_port(),), nprocs=2, join=False,  # type: ignore[no-untyped-call]
                              start_method="spawn")
        give_up = time.perf_counter() + 120
        while not ctx.join(timeout=5):
            if time.perf_counter() > give_up:
                for proc in ctx.processes:
                    proc.kill()
                raise TimeoutError("the two ranks hung for 120 s")
        verdict = "NCCL accepted two ranks on one GPU (all_reduce correct)"
    except Exception as exc:  # noqa: BLE001
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        verdict = f"NCCL refused two ranks on one GPU: {lines[-1][:200]}"
    return Result("", "SKIP", detail={"reason": verdict + "; the launcher maps rank r to cuda:r, so GLM-130B "
                                      "TP=2 runs only with 2 GPUs"})


def perturbed_copy(src: Path, dst: Path) -> Path:
    """``src`` with the final norm's weights doubled (every logit doubles: a difference of the order
    of the whole logit range), for the negative control."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        state = load_file(str(f))
        if "model.norm.weight" in state:
            state["model.norm.weight"] = state["model.norm.weight"] * 2
            save_file(state, str(f), metadata={"format": "pt"})
            return dst
    raise RuntimeError("no model.norm.weight to perturb")


def machine(cpu: bool) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cpu_count": os.cpu_count(), "mode": "cpu" if cpu else "cuda"}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        import llama_cpp

        out["llama_cpp_python"] = llama_cpp.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        out["gpus"] = [{"name": torch.cuda.get_device_name(i),
                        "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
                       for i in range(torch.cuda.device_count())]
        out["cuda"] = torch.version.cuda
    return out


def markdown_table(report: dict[str, Any]) -> str:
    """The report as the Markdown tables benchmarks/RESULTS.md records: one row per path, then the
    memory rows (measured peak vs the planner's prediction) and the bandwidth rows."""
    m = report["machine"]
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in m.get("gpus", [])) or "none (CPU mode)"
    lines = [f"Machine: {gpus}; torch {m.get('torch')}, CUDA {m.get('cuda', '-')}, transformers "
             f"{m.get('transformers', '-')}, llama-cpp-python {m.get('llama_cpp_python', '-')}; "
             f"{report['seconds']} s in all; {report['counts']}.", "",
             "| path | status | difference | bound | tokens/s |", "| --- | --- | --- | --- | --- |"]
    for p in report["paths"]:
        diff = "-" if p["diff"] is None else f"{p['diff']:.1e}"
        bound = "-" if p["bound"] is None else f"{p['bound']:.1e} ({p['bound_kind']})"
        tps = "-" if p["tokens_per_s"] is None else f"{p['tokens_per_s']:.1f}"
        status = p["status"] + (f": {p['detail']['reason']}" if p["detail"].get("reason") else "")
        lines.append(f"| {p['name']} | {status} | {diff} | {bound} | {tps} |")
    mem = [(p["name"], p["detail"]["memory"]) for p in report["paths"]
           if isinstance(p["detail"].get("memory"), dict) and p["detail"]["memory"].get("max_memory_allocated")]
    if mem:
        lines += ["", "| path | max_memory_allocated (MiB) | planner (MiB) | planner / measured |",
                  "| --- | --- | --- | --- |"]
        for name, d in mem:
            pred = d["planner"].get("predicted_bytes")
            planned = "-" if pred is None else f"{pred / 2**20:.1f}"
            lines.append(f"| {name} | {d['max_memory_allocated'] / 2**20:.1f} | {planned} | "
                         f"{d.get('predicted_over_measured', '-')} |")
    bw = [p for p in report["paths"] if p["detail"].get("bandwidth_bound_tokens_per_s")]
    if bw:
        lines += ["", "| path | tokens/s | bound (4.3 TB/s / bytes per token) | fraction |",
                  "| --- | --- | --- | --- |"]
        for p in bw:
            lines.append(f"| {p['name']} | {p['tokens_per_s']} | {p['detail']['bandwidth_bound_tokens_per_s']:.0f} | "
                         f"{p['detail'].get('fraction_of_bound', '-')} |")
    batch = [p for p in report["paths"] if p["detail"].get("speedup_8_vs_1")]
    if batch:
        lines += ["", "| batched path | 1 sequence tok/s | 8 sequences tok/s (aggregate) | 8 vs 1 |",
                  "| --- | --- | --- | --- |"]
        for p in batch:
            d = p["detail"]
            lines.append(f"| {p['name']} | {d['tokens_per_s_1']} | {d['tokens_per_s_8']} | {d['speedup_8_vs_1']} |")
    kv = [p for p in report["paths"] if p["bound_kind"] == "kv-budget"]
    if kv:
        lines += ["", "| KV budget path | default budget (MiB) | half the free memory (MiB) | most rows at once "
                  "(plan: rows x slot tokens) | KV used / budget |", "| --- | --- | --- | --- | --- |"]

        def mib(v: Any) -> str:
            return "-" if v is None else f"{v / 2**20:.0f}"
        for p in kv:
            d = p["detail"]
            plan = d.get("plan") or ["-", "-"]
            lines.append(f"| {p['name']} | {mib(d.get('default_budget'))} | {mib(d.get('half_free'))} | "
                         f"{d.get('most_rows')} ({plan[0]} x {plan[1]}) | {p['diff']:.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="run every path with the device side on the CPU")
    ap.add_argument("--out", default=None, help="JSON report (default $OUT/gpu_check.json or ./gpu_check.json)")
    ap.add_argument("--only", default=None, help="comma-separated path-name prefixes, e.g. llama-hf,rwkv4")
    ap.add_argument("--perturb", action="store_true",
                    help="negative control: the device side of the llama-hf paths reads a changed weight; the "
                         "torch batched decoders decode each row one position off (a batching bug)")
    ap.add_argument("--big-hidden", type=int, default=2048, help="hidden size of the bandwidth model (GPU)")
    ap.add_argument("--big-layers", type=int, default=16, help="layers of the bandwidth model (GPU)")
    ap.add_argument("--budget-s", type=float, default=450.0,
                    help="seconds after which the remaining paths SKIP (the report is still written)")
    ap.add_argument("--keep", default=None, help="build the models in this folder and keep them")
    ap.add_argument("--table", default=None, metavar="REPORT",
                    help="print a report written earlier as Markdown tables (for benchmarks/RESULTS.md) and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return 0
    out = Path(args.out or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else "gpu_check.json"))
    os.environ.setdefault("OPENLLM_HUB_NO_PROGRESS", "1")

    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device visible to torch (use --cpu for the CPU dry run)", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (the fp32 bound assumes it)
    torch.backends.cudnn.allow_tf32 = False
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("OPENLLM_HUB_CACHE_DIR", str(work / "cache"))
        os.environ.setdefault("OPENLLM_HUB_CONFIG_DIR", str(work / "config"))
        ensure_plugin_entry_points(work)
        check = Check(args, work)
        print(f"gpu_check: {'CPU dry run' if check.cpu else f'{check.gpus} GPU(s)'}; torch {torch.__version__}",
              flush=True)
        for phase in (check.llama, check.chatglm, check.rwkv, check.glm130b, check.lora, check.bandwidth):
            if check.out_of_time():
                check.skip(phase.__name__, f"time budget of {args.budget_s} s spent (--budget-s)")
                continue
            try:
                phase()
            except Exception as exc:  # noqa: BLE001 - a builder failing is one ERROR line, not the end
                check.record(Result(phase.__name__, "ERROR",
                                    detail={"error": f"{type(exc).__name__}: {exc}"[:300],
                                            "traceback": traceback.format_exc(limit=-4)}))
    counts = {s: sum(r.status == s for r in check.results) for s in ("PASS", "FAIL", "SKIP", "ERROR")}
    report = {"machine": machine(check.cpu), "args": vars(args), "bounds": BOUNDS,
              "seconds": round(time.perf_counter() - t_start, 1), "counts": counts,
              "ok": counts["FAIL"] == 0 and counts["ERROR"] == 0,
              "paths": [asdict(r) for r in check.results]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"gpu_check: {counts} in {report['seconds']} s; report {out}", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
