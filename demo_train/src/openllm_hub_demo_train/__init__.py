"""Training pipeline of the built-in ``demo`` models, run as ``openllm-hub-demo-train``.

Everything is generated here, deterministically from a seed: a bilingual (English/Chinese)
corpus of simple stories and facts (:mod:`.corpus`), Alpaca instruction data
(:mod:`.instructions`), a sentencepiece tokenizer (:mod:`.spm`) and a small LLaMA trained
with transformers and a plain torch loop (:mod:`.train`). The corpus is the project's own
text (MIT), made from the templates and word lists in :mod:`.lexicon` and :mod:`.stories`.

It is a distribution of its own (``openllm-hub-demo-train``, the repository's ``demo_train/``):
the llama plugin ships the trained models, not the corpus generator and trainer that made them.
"""
