"""The hooks a plugin may implement: the whole plugin API, documented for plugin authors.

A plugin is a module registered under the ``openllm_hub`` entry-point group, e.g. in its
``pyproject.toml``::

    [project.entry-points.openllm_hub]
    mything = "openllm_hub_mything.plugin"

The module sets ``OPENLLM_HUB_API_VERSION = API_VERSION`` (the core refuses other values, and
says so in ``openllm-hub plugins``) and implements any of the hooks below with ``@hookimpl``.
Everything a plugin imports comes from :mod:`openllm_hub.plugin` (and the shared engines in
:mod:`openllm_hub.engines`), never from ``openllm_hub.core``::

    from openllm_hub.plugin import API_VERSION, Family, hookimpl

    OPENLLM_HUB_API_VERSION = API_VERSION

    @hookimpl
    def register_families(register):
        register(Family(name="mything", ...))

Keep the module light: import engines (torch, llama_cpp, ...) inside your loaders, never at
module level; ``import openllm_hub`` and ``openllm-hub --help`` load every plugin.
Each hook is called once per plugin; an exception in one plugin's hook marks that plugin as
broken (shown by ``openllm-hub plugins``) and leaves the others working.

A family describes its memory as data through ``Family(memory=...)``: a function
``(path, format) -> ModelSpec`` (:mod:`openllm_hub.core.plan`) that reads the model's shapes
from its config alone (config.json, params.json, GGUF metadata, tensor shapes from a header;
never the weights, no engine import). With it, ``openllm-hub plan MODEL --gpus 8x40G`` plans
the family's models (TP degree, quantization, offload) and every ``load()`` refuses early,
with the numbers, a model that cannot fit the device it was placed on::

    from openllm_hub.plugin import ModelSpec

    def memory(path, fmt):
        cfg = read_json(path / "config.json")
        h, L = cfg["hidden_size"], cfg["num_layers"]
        return ModelSpec(name=str(path), family="mything", num_layers=L, hidden_size=h,
                         num_heads=cfg["heads"], vocab_size=cfg["vocab_size"], max_seq=cfg["context"],
                         layer_matrices=((3 * h, h), (h, h), (4 * h, h), (h, 4 * h)), layer_small=4 * h,
                         embedding_params=2 * cfg["vocab_size"] * h, mlp_width=4 * h,
                         kv_per_token_layer=2 * h)

``Family(tiny=TinyBuilder(formats, write, options))`` lets ``openllm-hub tiny mything OUT``
write a small random checkpoint in the family's real layout (for trying workflows without a
real model, and for bug reports). ``write(dst, format, options)`` creates ``dst`` (a file or
folder; the core writes it atomically and refuses an existing OUT unless ``--force``) and
returns the path to load; ``options`` holds only the ``-o`` keys the builder names::

    from openllm_hub.plugin import TinyBuilder, int_option

    def write_tiny(dst, fmt, options):
        from mything.tiny import build       # torch etc. imported here, not at module level
        return build(dst, layers=int_option(options, "layers", 2, minimum=1))

    TINY = TinyBuilder(("mything",), write_tiny, {"layers": "decoder layers (default 2)"})

Several users at once: the core runs several sequences of one loaded model together
(``Model.generate_batch``/``stream_batch``, ``openllm-hub serve --parallel N``). A model
whose engine can decode several sequences in one forward pass overrides
``Model._batch_decoder(slots)`` to return a :class:`~openllm_hub.plugin.BatchDecoder`
(``join(key, prompt_ids, config)`` between steps, ``step()`` giving each sequence its next
id, ``leave(key)`` freeing its cache; sample each sequence with its own
:class:`~openllm_hub.plugin.Sampler` seeded from its config). Without one the core
interleaves the model's ``_token_stream`` generators, one token each in turn; say where
your engine keeps its generation state in ``Model.sequence_interleaving``
(``"independent"``, the default: in each generator, as with ``generate_tokens`` and a
per-call cache; ``"swap"``: one state on the model, with ``_save_sequence_state`` and
``_restore_sequence_state``; ``"serial"``: neither). ``ModelConformance``'s batch checks
prove the result equals single runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from openllm_hub.core.chat import ChatTemplate
    from openllm_hub.core.family import Family

hookspec = pluggy.HookspecMarker("openllm_hub")
hookimpl = pluggy.HookimplMarker("openllm_hub")


@hookspec
def register_families(register: Callable[[Family], None]) -> None:
    """Register model families by calling ``register(Family(...))`` once per family.

    A :class:`~openllm_hub.plugin.Family` bundles its ``detect`` (score a path, cheap,
    no engine imports), ``load`` (build a Model), supported devices, load options
    (a pydantic model; unknown options are rejected by name), converters, quantizers,
    LoRA merger, built-in model names, chat templates, its ``memory`` description (shapes
    for the planner, see above) and its ``tiny`` checkpoint writer (``openllm-hub tiny``,
    see above).

    :param register: call it once per :class:`~openllm_hub.plugin.Family`.
    :return: nothing.

    Called once per plugin when the registry first loads plugins (the first ``load``,
    ``detect`` or CLI command of the process), before ``register_chat_templates``. Family names
    and aliases are unique across plugins: a clash marks this plugin as broken and registers
    none of its families. An exception does the same; other plugins keep working.
    """


@hookspec
def register_chat_templates(register: Callable[[ChatTemplate], None]) -> None:
    """Register chat templates by calling ``register(ChatTemplate(...))``.

    For templates that belong to no family of the plugin (a family's own templates can go in
    ``Family(chat_templates=...)`` instead, registered with the family).

    :param register: call it once per :class:`~openllm_hub.core.chat.ChatTemplate`.
    :return: nothing.

    Called once per plugin when the registry loads it, after ``register_families``. Names
    are global and unique, like family names: a name the core (``plain``, ``chatml``) or
    another plugin already took, or one given twice, marks this plugin as broken (shown by
    ``openllm-hub plugins``) and none of its families or templates is registered. A model's
    ``default_chat_template`` should name one of them.
    """


@hookspec
def register_commands(cli: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add CLI subcommands: ``p = cli.add_parser("name", help=...)``, then
    ``p.set_defaults(handler=fn)`` where ``fn(args) -> int | None`` runs the command.

    :param cli: the ``openllm-hub`` subparsers; :mod:`openllm_hub.cli_args` has the shared
        flags (``add_load_arguments``, ``add_generation_arguments``) so every run command
        speaks one flag vocabulary.
    :return: nothing.

    Called each time the CLI builds its parser (every ``openllm-hub`` invocation, ``--help``
    included), so keep it cheap: import engines inside ``fn``. Raise
    :class:`~openllm_hub.plugin.OpenLLMHubError` for bad input; the CLI prints it as one line
    and exits 1. An exception here is reported and the other commands keep working.
    """


@hookspec
def report_engines() -> dict[str, dict[str, Any]] | None:
    """Describe the engines this plugin uses, for ``openllm-hub devices``.

    :return: a mapping from engine name to facts such as version, BLAS, GPU offload and CPU
        features, or None when there is nothing to report.

    Called only by ``openllm-hub devices`` (and ``--json``), so it may import its engine. An
    exception is shown in that engine's row instead of its facts.
    """
