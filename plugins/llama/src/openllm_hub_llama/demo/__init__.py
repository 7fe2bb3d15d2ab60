"""The built-in demo models: ``demo`` and ``demo-chat``, shipped as HuggingFace folders.

``load("demo")`` resolves to the shipped folder with ``engine="llama.cpp"``: the llama
family's HF-via-llama.cpp path converts it once with the SDK's own hf -> gguf converter
(f16) into the user cache directory and reuses that file afterwards
(:func:`openllm_hub_llama.engine_gguf.load_hf_via_gguf`). ``load("demo",
engine="transformers")`` runs the same shipped weights on torch: options given to ``load``
override the ones a model name brings.

``demo-chat`` is the base model fine-tuned on the corpus's Alpaca instructions with
``openllm-hub lora train`` and merged with ``openllm-hub merge-lora`` (see
``python -m openllm_hub_demo_train chat``); it defaults to the ``alpaca`` chat template.

Nothing heavy is imported here: the plugin module imports this at registration time.
"""

from __future__ import annotations

from pathlib import Path

from openllm_hub.plugin import ModelName, NotFoundError

HERE = Path(__file__).resolve().parent
DEMO_DIR = HERE / "openllm-hub-demo"
DEMO_CHAT_DIR = HERE / "openllm-hub-demo-chat"
#: What an HF folder of ours must hold to be loadable.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json")


def _checked(folder: Path, name: str) -> Path:
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise NotFoundError(
            f"the built-in {name!r} model is incomplete (missing {', '.join(missing)})",
            where=folder,
            fix="reinstall openllm-hub-llama, or rebuild it with the repository's demo_train/ distribution: "
                "python -m openllm_hub_demo_train all "
                f"--work WORK --out {folder}" + (" (then its 'chat' stage)" if name == "demo-chat" else ""),
        )
    return folder


def demo_path() -> Path:
    """The shipped ``demo`` HF folder."""
    return _checked(DEMO_DIR, "demo")


def demo_chat_path() -> Path:
    """The shipped ``demo-chat`` HF folder (LoRA-tuned, merged)."""
    return _checked(DEMO_CHAT_DIR, "demo-chat")


MODEL_NAMES: tuple[ModelName, ...] = (
    ModelName("demo", "the project's own 4M-parameter LLaMA (English/Chinese children's stories), trained on a "
                      "CPU; runs on llama.cpp (converted to GGUF in the cache on first use)",
              demo_path, {"engine": "llama.cpp"}),
    ModelName("demo-chat", "demo fine-tuned with `openllm-hub lora train` on Alpaca instructions and merged; "
                           "alpaca chat template",
              demo_chat_path, {"engine": "llama.cpp", "chat_template": "alpaca"}),
)
