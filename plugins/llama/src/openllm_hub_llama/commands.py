"""The ``openllm-hub lora`` commands the LLaMA plugin adds (``register_commands``):

* ``lora train BASE DATA -o OUT`` — fine-tune a LoRA adapter on Alpaca-format data;
* ``lora gguf ADAPTER --base BASE -o OUT.gguf`` — convert a PEFT adapter to a GGUF LoRA for
  ``openllm-hub run BASE.gguf --lora OUT.gguf[:SCALE]`` or ``load(base.gguf, lora=[(OUT.gguf, scale)])``.

(Merging is the core's ``openllm-hub merge-lora``.) Only argparse is imported here; the work
is imported when a command runs.
"""

from __future__ import annotations

import argparse
from typing import Any


def cmd_train(args: argparse.Namespace) -> int:
    from openllm_hub_llama.lora_train import TrainConfig, parse_modules, train_lora

    cfg = TrainConfig(base=args.base, data=args.data, output=args.output, r=args.rank, alpha=args.alpha,
                      dropout=args.dropout, target_modules=parse_modules(args.target_modules),
                      use_rslora=args.rslora, epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size,
                      grad_accum=args.grad_accum, cutoff_len=args.cutoff_len, val_size=args.val_size,
                      train_on_inputs=args.train_on_inputs, add_eos=args.add_eos, warmup_steps=args.warmup_steps,
                      max_steps=args.max_steps, save_steps=args.save_steps, eval_steps=args.eval_steps,
                      keep_checkpoints=args.keep_checkpoints, seed=args.seed, device=args.device)
    result = train_lora(cfg, resume=args.resume)
    losses = ", ".join(f"{k} {v:.4f}" for k, v in (("train loss", result.train_loss), ("val loss", result.val_loss))
                       if v is not None)
    print(f"wrote adapter {result.output} after {result.steps} steps" + (f" ({losses})" if losses else ""))
    return 0


def cmd_gguf(args: argparse.Namespace) -> int:
    from openllm_hub_llama.lora_gguf import convert_adapter_to_gguf

    out = convert_adapter_to_gguf(args.adapter, args.base, args.output, outtype=args.outtype, force=args.force)
    print(f"wrote {out}\n"
          f"use it: openllm-hub run BASE.gguf --lora {out} -p PROMPT  (--lora {out}:0.5 halves its effect)\n"
          f"    or: load('BASE.gguf', lora=[('{out}', 1.0)])")
    return 0


def add_lora_commands(cli: Any) -> None:
    """Register ``lora train`` and ``lora gguf`` on the CLI's subparsers."""
    lora = cli.add_parser("lora", help="LoRA: fine-tune adapters (train), convert them for llama.cpp (gguf)")
    sub = lora.add_subparsers(dest="lora_command", metavar="ACTION")

    def usage(_: argparse.Namespace) -> int:
        lora.print_help()
        return 2

    lora.set_defaults(handler=usage)

    p = sub.add_parser("train", help="fine-tune a LoRA adapter on Alpaca-format JSON (instruction/input/output)",
                       description="Fine-tune a LoRA adapter with peft on an Alpaca-format dataset (alpaca-lora's "
                                   "recipe). OUT receives a standard PEFT adapter plus resumable checkpoints.")
    p.add_argument("base", help="LLaMA HuggingFace folder or Meta checkpoint")
    p.add_argument("data", help="Alpaca JSON list or JSONL (instruction, input, output)")
    p.add_argument("-o", "--output", required=True, help="output folder (new or empty; with --resume: the run's)")
    p.add_argument("-r", "--rank", type=int, default=8, help="LoRA rank r (default 8)")
    p.add_argument("--alpha", type=float, default=16.0, help="lora_alpha (default 16)")
    p.add_argument("--dropout", type=float, default=0.05, help="lora_dropout (default 0.05)")
    p.add_argument("--target-modules", default="q_proj,v_proj",
                   help="comma-separated modules (default q_proj,v_proj; all: q_proj,k_proj,v_proj,o_proj,"
                        "gate_proj,up_proj,down_proj)")
    p.add_argument("--rslora", action="store_true", help="rank-stabilised scaling alpha/sqrt(r)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=3e-4, help="learning rate (default 3e-4)")
    p.add_argument("--batch-size", type=int, default=4, help="examples per forward pass (default 4)")
    p.add_argument("--grad-accum", type=int, default=32,
                   help="micro-batches per optimizer step (default 32: 128 examples per step)")
    p.add_argument("--cutoff-len", type=int, default=256, help="tokens per example at most (default 256)")
    p.add_argument("--val-size", type=float, default=0.0, help="validation examples (>= 1) or fraction (< 1)")
    p.add_argument("--no-train-on-inputs", dest="train_on_inputs", action="store_false",
                   help="learn only the responses (mask the prompt's tokens)")
    p.add_argument("--no-eos", dest="add_eos", action="store_false", help="do not append </s> to examples")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (schedule unchanged)")
    p.add_argument("--save-steps", type=int, default=50, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--eval-steps", type=int, default=50, help="validation loss every N steps (0: only at the end)")
    p.add_argument("--keep-checkpoints", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from its newest checkpoint")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("gguf", help="convert a PEFT LoRA adapter to a GGUF LoRA for llama.cpp",
                       description="Convert a PEFT LoRA adapter to llama.cpp's GGUF LoRA format, applied at load "
                                   "time: openllm-hub run BASE.gguf --lora OUT[:SCALE] (also chat, serve, "
                                   "perplexity), or load(BASE.gguf, lora=[(OUT, scale)]). Adapters with full "
                                   "embedding/lm_head weights (extended vocabularies) must be merged with merge-lora "
                                   "instead.")
    p.add_argument("adapter", help="PEFT adapter folder (adapter_config.json + adapter_model.*)")
    p.add_argument("--base", required=True, help="the LLaMA base: GGUF file, HuggingFace folder or Meta checkpoint")
    p.add_argument("-o", "--output", required=True, help="output .gguf file")
    p.add_argument("--outtype", default="f32", choices=("f32", "f16"))
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(handler=cmd_gguf)
