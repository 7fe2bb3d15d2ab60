"""``openllm-hub-demo-train`` (``python -m openllm_hub_demo_train``): rebuild the demo model from nothing.

    openllm-hub-demo-train all --work WORKDIR --out MODEL_DIR [--steps N]

runs the three stages (also available alone: ``corpus``, ``tokenizer``, ``train``) and
writes the model card; then

    openllm-hub-demo-train chat --work WORKDIR --base MODEL_DIR --out CHAT_DIR

makes ``demo-chat`` with ``openllm-hub lora train`` and ``openllm-hub merge-lora``.
``--preset tiny`` runs the same pipeline at toy size in seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from openllm_hub_demo_train import corpus, spm
from openllm_hub_demo_train.train import PRESETS, TrainConfig, train

TINY_SIZES = corpus.CorpusSizes(train_docs=300, heldout_docs=20, alpaca_train=50, alpaca_heldout=10)


def _config(args: argparse.Namespace) -> TrainConfig:
    cfg = PRESETS[args.preset]
    overrides = {k: getattr(args, k) for k in ("steps", "seed", "batch_size", "lr") if getattr(args, k) is not None}
    return dataclasses.replace(cfg, **overrides)


def cmd_corpus(args: argparse.Namespace) -> int:
    sizes = TINY_SIZES if args.preset == "tiny" else corpus.CorpusSizes()
    c = corpus.write_corpus(args.work, seed=args.seed or 0, sizes=sizes)
    print(f"[corpus] {len(c.train):,} training and {len(c.heldout):,} held-out documents, "
          f"{len(c.alpaca_train):,}+{len(c.alpaca_heldout):,} instructions -> {args.work}")
    return 0


def cmd_tokenizer(args: argparse.Namespace) -> int:
    work = Path(args.work)
    lines = corpus.read_lines(work / "train.txt")
    vocab = args.vocab or (spm.TINY_VOCAB if args.preset == "tiny" else spm.DEFAULT_VOCAB)
    spm.train_tokenizer(lines + spm.alpaca_lines(work / "alpaca_train.json"), work / "tokenizer.model",
                        vocab_size=vocab)
    print(f"[tokenizer] {work / 'tokenizer.model'} ({vocab} pieces)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from openllm_hub_demo_train.card import write_model_card

    work = Path(args.work)
    cfg = _config(args)
    train(corpus.read_lines(work / "train.txt"), corpus.read_lines(work / "heldout.txt"), work / "tokenizer.model",
          args.out, cfg, force=args.force)
    write_model_card(Path(args.out), with_samples=args.preset != "tiny")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from openllm_hub_demo_train.chat_tune import chat_tune

    result = chat_tune(Path(args.base), Path(args.work), Path(args.out), tiny=args.preset == "tiny", force=args.force)
    print(f"[chat] wrote {result.merged}")
    return 0


def cmd_all(args: argparse.Namespace) -> int:
    for step in (cmd_corpus, cmd_tokenizer, cmd_train):
        if step(args):
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="openllm-hub-demo-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", required=True)
    for name, fn, help_ in (("corpus", cmd_corpus, "generate the corpus into --work"),
                            ("tokenizer", cmd_tokenizer, "train tokenizer.model on --work/train.txt"),
                            ("train", cmd_train, "train the model into --out"),
                            ("all", cmd_all, "corpus, tokenizer, train"),
                            ("chat", cmd_chat, "LoRA-tune --base on --work/alpaca_train.json, merge into --out")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--work", required=True, help="folder for the corpus and the tokenizer")
        s.add_argument("--out", help="model folder to write (train, all)")
        s.add_argument("--preset", choices=sorted(PRESETS), default="demo")
        s.add_argument("--seed", type=int)
        s.add_argument("--steps", type=int)
        s.add_argument("--batch-size", type=int)
        s.add_argument("--lr", type=float)
        s.add_argument("--vocab", type=int)
        s.add_argument("--force", action="store_true", help="replace --out if it exists")
        if name == "chat":
            s.add_argument("--base", required=True, help="the base model folder (the output of 'train')")
        s.set_defaults(handler=fn)
    args = p.parse_args(argv)
    if args.stage in ("train", "all", "chat") and not args.out:
        p.error("--out is required")
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
