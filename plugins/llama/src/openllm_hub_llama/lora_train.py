"""``openllm-hub lora train``: LoRA fine-tuning of a LLaMA on Alpaca-format data (alpaca-lora's
recipe) with peft + transformers and a plain torch loop.

The loop is small on purpose: AdamW on the LoRA parameters, linear warm-up then linear decay
over the planned epochs, micro-batches of ``batch_size`` accumulated ``grad_accum`` times per
optimizer step, gradient clipping at 1.0, validation loss on a held-out split, a progress bar.

Output folder ``OUT``:

* ``adapter_config.json`` + ``adapter_model.safetensors`` — a standard PEFT adapter
  (``PeftModel.from_pretrained`` and ``openllm-hub merge-lora`` read it), written when
  training ends;
* ``checkpoints/step-NNNNNN/`` — the adapter plus ``trainer_state.pt`` (optimizer, scheduler,
  torch RNG states) and ``trainer_state.json`` (step, losses), each written under a
  temporary name and renamed; the last ``keep_checkpoints`` are kept. ``resume=True``
  continues from the newest one exactly where it stopped: the epoch order of the examples
  is a function of the seed and the epoch, and the dropout RNG is restored, so an
  interrupted and resumed run equals an uninterrupted one;
* ``train_config.json`` (the settings; a resume must use the same ones) and
  ``train_log.jsonl`` (one line per step and per evaluation).

On CPU the base is float32; on CUDA bfloat16 when the GPU supports it (the LoRA weights stay
float32), else float32.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openllm_hub.engines.hf_quiet import hf_quiet
from openllm_hub.plugin import (
    CorruptFileError,
    DestinationExistsError,
    IncompatibleDeviceError,
    InvalidParameterError,
    NotFoundError,
    PluginError,
    Progress,
    atomic_output,
    progress_enabled,
    read_json,
    read_safetensors_header,
    write_json,
)
from openllm_hub_llama.checkpoint import check_hf_folder
from openllm_hub_llama.lora_data import Features, load_alpaca, pad_batch, split_validation, tokenize_example

if TYPE_CHECKING:  # pragma: no cover
    import torch

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")
#: Settings that must not change between a run and its resumption.
RESUME_KEYS = ("base", "data", "r", "alpha", "dropout", "target_modules", "use_rslora", "epochs", "learning_rate",
               "batch_size", "grad_accum", "cutoff_len", "val_size", "train_on_inputs", "add_eos", "warmup_steps",
               "seed")


@dataclass
class TrainConfig:
    """The knobs of ``lora train`` (alpaca-lora's defaults where it has one)."""

    base: str
    data: str
    output: str
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    use_rslora: bool = False
    epochs: int = 3
    learning_rate: float = 3e-4
    batch_size: int = 4
    grad_accum: int = 32
    cutoff_len: int = 256
    val_size: float = 0.0
    train_on_inputs: bool = True
    add_eos: bool = True
    warmup_steps: int = 0
    max_steps: int | None = None
    save_steps: int = 50
    eval_steps: int = 50
    keep_checkpoints: int = 2
    seed: int = 42
    device: str = "auto"

    def validate(self) -> None:
        checks = [
            (self.r >= 1, "r must be >= 1"), (self.alpha > 0, "alpha must be > 0"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"), (self.epochs >= 1, "epochs must be >= 1"),
            (self.learning_rate > 0, "learning_rate must be > 0"), (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"), (self.cutoff_len >= 2, "cutoff_len must be >= 2"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1"),
            (self.save_steps >= 0 and self.eval_steps >= 0, "save_steps / eval_steps must be >= 0"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (bool(self.target_modules), "target_modules must name at least one module"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             "device must be auto, cpu, cuda or cuda:N"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InvalidParameterError(msg, where="lora train")


@dataclass(frozen=True)
class TrainResult:
    output: Path
    steps: int
    train_loss: float | None
    val_loss: float | None


# ---- setup -----------------------------------------------------------------------------------------
def _require_peft() -> None:
    try:
        import peft  # noqa: F401
    except ImportError as exc:
        raise PluginError("LoRA training needs the peft package", where="lora train",
                          fix="pip install peft (or openllm-hub-llama[lora])") from exc


def _hf_folder(base: Path) -> Path:
    """The HuggingFace folder to train on (a Meta checkpoint is converted once into the cache)."""
    from openllm_hub.plugin import detect

    _fam, det = detect(base, family="llama")
    if det.format == "hf":
        return base
    if det.format == "meta":
        from openllm_hub_llama.convert_meta import meta_to_hf_cached

        return meta_to_hf_cached(base)
    raise InvalidParameterError(f"cannot train on a {det.format} checkpoint", where=base,
                                fix="train on the HuggingFace folder or Meta checkpoint the GGUF was made from")


def _device(cfg: TrainConfig) -> torch.device:
    import torch

    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise IncompatibleDeviceError("CUDA is not available to torch here", where="device",
                                      fix="use --device cpu, or install a CUDA build of torch")
    return torch.device(cfg.device)


def _prepare_output(cfg: TrainConfig, resume: bool) -> Path:
    out = Path(cfg.output)
    settings = {k: v for k, v in asdict(cfg).items() if k in RESUME_KEYS}
    if resume:
        if not (out / "train_config.json").is_file():
            raise NotFoundError("nothing to resume: no train_config.json in the output folder", where=out,
                                fix="start a new run without --resume")
        old = read_json(out / "train_config.json")
        changed = sorted(k for k in RESUME_KEYS if old.get(k) != settings.get(k))
        if changed:
            raise InvalidParameterError(f"a resumed run must use the settings it started with; changed: "
                                        f"{', '.join(changed)}", where=out / "train_config.json",
                                        fix="pass the original settings, or train into a new folder")
        return out
    if out.exists() and any(out.iterdir()):
        raise DestinationExistsError("the output folder is not empty", where=out,
                                     fix="pass --resume to continue its run, or choose a new folder")
    if not out.parent.exists():
        raise NotFoundError("the output's parent folder does not exist", where=out.parent, fix="create it first")
    out.mkdir(exist_ok=True)
    with atomic_output(out / "train_config.json") as tmp:
        write_json(tmp, settings)
    return out


def latest_checkpoint(out: Path) -> Path | None:
    """The newest ``checkpoints/step-N`` folder of a training output, or None."""
    root = out / CHECKPOINTS
    if not root.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir())
    return found[-1][1] if found else None


# ---- the loop --------------------------------------------------------------------------------------
class _Trainer:
    def __init__(self, cfg: TrainConfig, *, resume: bool, progress: bool | None) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import LlamaForCausalLM

        from openllm_hub_llama.engine_hf import SentencePieceTokenizer

        cfg.validate()
        self.cfg = cfg
        self.progress = progress_enabled() if progress is None else progress
        base = Path(cfg.base)
        if not base.exists():
            raise NotFoundError("base model not found", where=base)
        examples = load_alpaca(cfg.data)
        hf = _hf_folder(base)
        self.device = _device(cfg)
        tok = SentencePieceTokenizer(hf)
        sp = tok.sp
        self.pad_id = sp.unk_id() if sp.unk_id() >= 0 else 0
        feats = [tokenize_example(ex, tok, bos_id=sp.bos_id() if sp.bos_id() >= 0 else None,
                                  eos_id=sp.eos_id() if sp.eos_id() >= 0 else None, cutoff_len=cfg.cutoff_len,
                                  train_on_inputs=cfg.train_on_inputs, add_eos=cfg.add_eos) for ex in examples]
        train_idx, val_idx = split_validation(len(feats), cfg.val_size, cfg.seed)
        self.train: list[Features] = [feats[i] for i in train_idx]
        self.val: list[Features] = [feats[i] for i in val_idx]
        self.out = _prepare_output(cfg, resume)  # only once every input is known to be usable
        self.micro_per_epoch = math.ceil(len(self.train) / cfg.batch_size)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.grad_accum)
        self.planned_steps = self.steps_per_epoch * cfg.epochs
        self.last_step = min(self.planned_steps, cfg.max_steps or self.planned_steps)

        use_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.dtype = torch.bfloat16 if use_bf16 else torch.float32
        torch.manual_seed(cfg.seed)
        check_hf_folder(hf)
        try:
            with hf_quiet():
                model = LlamaForCausalLM.from_pretrained(str(hf), dtype=self.dtype, local_files_only=True)
        except Exception as exc:  # the library's errors at the load boundary
            raise CorruptFileError(f"cannot load the base model: {type(exc).__name__}: {exc}", where=hf,
                                   fix="check that every shard of the base is complete") from exc
        alpha: Any = int(cfg.alpha) if float(cfg.alpha).is_integer() else cfg.alpha
        lcfg = LoraConfig(r=cfg.r, lora_alpha=alpha, lora_dropout=cfg.dropout,
                          target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM",
                          use_rslora=cfg.use_rslora)
        try:
            with hf_quiet():
                self.model = get_peft_model(model, lcfg)
        except ValueError as exc:
            raise InvalidParameterError(f"cannot apply LoRA: {exc}", where="target_modules",
                                        fix="LLaMA modules: q_proj k_proj v_proj o_proj gate_proj up_proj "
                                            "down_proj") from exc
        self.model.to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
        warm, total = cfg.warmup_steps, self.planned_steps

        def lr_factor(step: int) -> float:
            if warm and step < warm:
                return (step + 1) / warm
            return max(0.0, (total - step) / max(1, total - warm))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor)
        self.step = 0
        self.train_loss: float | None = None
        self.val_loss: float | None = None
        if resume:
            self._load_checkpoint()

    # -- batches
    def _epoch_order(self, epoch: int) -> list[int]:
        import torch

        g = torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch)
        return [int(i) for i in torch.randperm(len(self.train), generator=g)]

    def _micro_batches(self, epoch: int) -> list[list[Features]]:
        order = self._epoch_order(epoch)
        bs = self.cfg.batch_size
        return [[self.train[i] for i in order[s:s + bs]] for s in range(0, len(order), bs)]

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        import torch

        if self.device.type == "cuda" and self.dtype == torch.bfloat16:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = self.model(**self._to_device(batch))
        else:
            out = self.model(**self._to_device(batch))
        loss: torch.Tensor = out.loss
        return loss

    def evaluate(self) -> float | None:
        import torch

        if not self.val:
            return None
        self.model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for s in range(0, len(self.val), self.cfg.batch_size):
                part = self.val[s:s + self.cfg.batch_size]
                batch = pad_batch(part, self.pad_id)
                n = int((batch["labels"][:, 1:] != -100).sum())
                total += float(self._loss(batch)) * n
                count += n
        self.model.train()
        return total / max(1, count)

    # -- checkpoints
    def _state(self) -> dict[str, Any]:
        import torch

        state: dict[str, Any] = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                                 "rng_cpu": torch.get_rng_state(), "step": self.step}
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def save_checkpoint(self) -> Path:
        import torch

        root = self.out / CHECKPOINTS
        root.mkdir(exist_ok=True)
        dst = root / f"step-{self.step:06d}"
        with atomic_output(dst, is_dir=True, force=True) as tmp:
            self.model.save_pretrained(str(tmp))
            torch.save(self._state(), tmp / "trainer_state.pt")
            write_json(tmp / "trainer_state.json", {"step": self.step, "planned_steps": self.planned_steps,
                                                    "train_loss": self.train_loss, "val_loss": self.val_loss})
        kept = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)))
        for _, old in kept[:-self.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return dst

    def _load_checkpoint(self) -> None:
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        ck = latest_checkpoint(self.out)
        if ck is None:
            raise NotFoundError("nothing to resume: no checkpoints in the output folder", where=self.out,
                                fix="start a new run without --resume")
        read_safetensors_header(ck / "adapter_model.safetensors")  # every header problem, as one clear error
        try:
            weights = load_file(str(ck / "adapter_model.safetensors"))
            with hf_quiet():
                set_peft_model_state_dict(self.model, weights)
        except Exception as exc:  # safetensors/peft errors at the resume boundary
            raise CorruptFileError(f"cannot resume from this checkpoint: {type(exc).__name__}: {exc}", where=ck,
                                   fix="delete the damaged checkpoint folder and resume from an earlier one") from exc
        from openllm_hub.plugin import load_torch_checkpoint

        state: dict[str, Any] = load_torch_checkpoint(ck / "trainer_state.pt", mmap=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.step = int(state["step"])
        info = read_json(ck / "trainer_state.json")
        self.train_loss, self.val_loss = info.get("train_loss"), info.get("val_loss")

    def _log(self, record: dict[str, Any]) -> None:
        with (self.out / "train_log.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    # -- training
    def run(self) -> TrainResult:
        import torch

        cfg = self.cfg
        self.model.train()
        with Progress(total=self.last_step, desc="lora train", unit="step", enabled=self.progress) as bar:
            bar.update(self.step)
            epoch = self.step // self.steps_per_epoch
            while self.step < self.last_step:
                micro = self._micro_batches(epoch)
                first = (self.step - epoch * self.steps_per_epoch) * cfg.grad_accum
                for s in range(first, len(micro), cfg.grad_accum):
                    group = micro[s:s + cfg.grad_accum]
                    total = 0.0
                    for mb in group:
                        loss = self._loss(pad_batch(mb, self.pad_id)) / len(group)
                        loss.backward()  # type: ignore[no-untyped-call]
                        total += float(loss.detach())
                    torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.step += 1
                    self.train_loss = total
                    self._log({"step": self.step, "epoch": epoch, "loss": total,
                               "lr": self.scheduler.get_last_lr()[0]})
                    bar.update()
                    bar.set_description(f"lora train (loss {total:.3f})")
                    if cfg.eval_steps and self.step % cfg.eval_steps == 0 and self.step < self.last_step:
                        self.val_loss = self.evaluate()
                        if self.val_loss is not None:
                            self._log({"step": self.step, "val_loss": self.val_loss})
                    if cfg.save_steps and self.step % cfg.save_steps == 0 and self.step < self.last_step:
                        self.save_checkpoint()
                    if self.step >= self.last_step:
                        break
                epoch += 1
        self.val_loss = self.evaluate()
        if self.val_loss is not None:
            self._log({"step": self.step, "val_loss": self.val_loss})
        self.save_checkpoint()
        self._write_adapter()
        return TrainResult(self.out, self.step, self.train_loss, self.val_loss)

    def _write_adapter(self) -> None:
        """The final adapter in ``OUT`` itself: weights first, config last (each renamed into place)."""
        from openllm_hub.plugin import scratch_dir

        with scratch_dir(self.out / "adapter") as tmp:
            self.model.save_pretrained(str(tmp))
            for name in ("adapter_model.safetensors", "README.md", "adapter_config.json"):
                if (tmp / name).is_file():
                    os.replace(tmp / name, self.out / name)


def train_lora(cfg: TrainConfig, *, resume: bool = False, progress: bool | None = None) -> TrainResult:
    """Train a LoRA adapter as ``cfg`` says (resuming from the newest checkpoint with ``resume``)."""
    _require_peft()
    return _Trainer(cfg, resume=resume, progress=progress).run()


def parse_modules(text: str | Sequence[str]) -> list[str]:
    """``"q_proj,v_proj"`` -> ``["q_proj", "v_proj"]``."""
    items = text.split(",") if isinstance(text, str) else list(text)
    return [s.strip() for s in items if s.strip()]
