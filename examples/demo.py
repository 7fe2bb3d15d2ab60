"""The main job, end to end: find a model, load it, stream text from it.

``make demo`` runs this. It uses the best built-in model the installed plugins offer
(the project's trained demo model when its plugin registers ``demo``, else the example
plugin's bigram model) and prints each step.
"""

from __future__ import annotations

import sys

import openllm_hub
from openllm_hub.core.registry import get_registry

PREFERRED = ("demo", "bigram-stories")
PROMPTS = ("Once upon a time", "从前")


def pick_model() -> str:
    names = {mn.name for _, mn in get_registry().model_names()}
    for name in PREFERRED:
        if name in names:
            return name
    raise SystemExit(f"no demo model installed (have: {sorted(names)}); run `make demo` from the repo root")


def main(argv: list[str]) -> int:
    name = argv[0] if argv else pick_model()
    n = int(argv[1]) if len(argv) > 1 else 64
    plugins = ", ".join(f"{r.name}{'' if not r.error else ' (broken)'}" for r in get_registry().plugins.values())
    print(f"[demo] plugins: {plugins}")
    print(f"[demo] loading {name!r} ...", flush=True)
    with openllm_hub.load(name) as model:
        i = model.info
        print(f"[demo] {i.family} model, {i.format} format, engine {i.engine} on {i.device}, "
              f"{i.parameters or '?'} parameters")
        for prompt in PROMPTS:
            print(f"[demo] generate(prompt={prompt!r}, max_new_tokens={n}, seed=42):\n")
            print(prompt, end="", flush=True)
            last = None
            for chunk in model.stream(prompt, max_new_tokens=n, seed=42, temperature=0.7):
                print(chunk.text, end="", flush=True)
                last = chunk
            print("\n")
            if last is not None and last.usage and last.timings:
                print(f"[demo] {last.usage.completion_tokens} tokens at "
                      f"{last.timings.generation_tokens_per_second:.1f} tokens/s ({last.finish_reason})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
