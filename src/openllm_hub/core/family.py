"""Family: what a plugin registers for one model family, as data.

The core never branches on a family's name: it asks each registered :class:`Family` to score
a path (``detect``), validates load options against the family's pydantic ``options`` model,
plans a placement from its ``devices`` rows, and calls its ``load``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic

from pydantic import BaseModel, ConfigDict
from typing_extensions import TypeVar

from openllm_hub.core.detect import Probe
from openllm_hub.core.device import DeviceSupport, Placement

if TYPE_CHECKING:  # pragma: no cover
    from openllm_hub.core.chat import ChatTemplate
    from openllm_hub.core.convert import Converter
    from openllm_hub.core.lora import LoraMerger
    from openllm_hub.core.model import Model
    from openllm_hub.core.plan import ModelSpec
    from openllm_hub.core.quantize import Quantizer


@dataclass(frozen=True)
class Detection:
    """A family's verdict on a path: which of its formats, how sure (0..1), and why."""

    format: str
    confidence: float
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)


class NoOptions(BaseModel):
    """Load options of a family that takes none: every unknown name is rejected."""

    model_config = ConfigDict(extra="forbid")


#: The type of a family's load options (its pydantic ``Family.options`` model); a bare
#: ``LoadRequest`` (plugins written before it was generic) means ``LoadRequest[BaseModel]``.
OptionsT = TypeVar("OptionsT", bound=BaseModel, covariant=True, default=BaseModel)


@dataclass(frozen=True)
class LoadRequest(Generic[OptionsT]):
    """Everything a family's loader gets: validated, placed, ready to build an engine.

    Generic over the family's options model, so a loader declared as
    ``def load(req: LoadRequest[MyOptions]) -> Model`` reads ``req.options.n_ctx`` typed.
    """

    path: Path
    format: str
    detection: Detection
    placement: Placement
    options: OptionsT


@dataclass(frozen=True)
class LaunchRequest:
    """``openllm-hub run MODEL --nproc N``: run one prompt over N local processes (ranks).

    ``params`` are validated :class:`~openllm_hub.core.config.GenerationConfig` fields and
    ``options`` the family's validated load options. The family's launcher starts the ranks,
    streams rank 0's text to stdout and returns an exit code.
    """

    path: Path
    nproc: int
    device: str
    prompt: str
    params: Mapping[str, Any]
    options: BaseModel
    threads: int | None = None
    dtype: str | None = None


@dataclass(frozen=True)
class ModelName:
    """A built-in model name a plugin offers (e.g. ``demo``): resolves to a path on demand."""

    name: str
    description: str
    resolve: Callable[[], Path]
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TinyBuilder:
    """How a family writes a small random checkpoint in its real on-disk layout, for
    ``openllm-hub tiny FAMILY OUT`` (trying a workflow without a real model, bug reports).

    ``write(dst, format, options)`` creates ``dst`` (a file or a folder; it does not exist yet
    and is a temporary sibling of OUT that the core renames when ``write`` returns) as a tiny
    checkpoint of ``format``, one of ``formats`` (the first is the default), and returns the
    path to load: ``dst`` itself or a path inside it. ``options`` are the ``-o key=value`` pairs
    (JSON-parsed), only keys named in ``options`` (key -> what it sets, for ``tiny --list``);
    bad values raise an :class:`~openllm_hub.errors.OpenLLMHubError`. Weights are random from a
    seed, so the same command writes the same checkpoint. Import engines inside ``write``.
    """

    formats: tuple[str, ...]
    write: Callable[[Path, str, Mapping[str, Any]], Path] = field(compare=False)
    options: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Family:
    """One model family.

    ``detect`` must be cheap and import no engine; ``load`` may import anything.
    ``formats`` lists every format the family recognises (including ones it only converts
    from); ``loadable`` those ``load`` can run (default: all). ``launch`` runs a prompt over
    several processes (tensor parallelism) for ``openllm-hub run --nproc N``. ``run_format``
    names the format that will actually run, given the load options, when options send a
    checkpoint to another engine (an HF folder run on llama.cpp runs as ``gguf``); its device
    rows are the ones placement uses.

    ``memory`` describes the model's memory as data, for ``openllm-hub plan MODEL`` and for the
    early refusal in ``load()``: called with the path and the detected format, it returns a
    :class:`~openllm_hub.core.plan.ModelSpec` (layers, hidden size, heads, KV values per token,
    an RNN's state size, vocabulary, context length, the shapes of one layer's matrices) read
    from config alone -- config.json, params.json, GGUF header metadata, a checkpoint's tensor
    shapes from its header -- never loading weights and importing no engine. It raises an
    :class:`~openllm_hub.errors.OpenLLMHubError` when the config cannot be read (``load()`` then
    skips its check and lets the loader report). None: the family cannot be planned and
    ``load()`` does not check its memory. ``published_shapes`` names the shapes of published
    models (e.g. ``glm-130b``) that ``plan NAME`` accepts with no file at all.

    ``tiny`` writes a small random checkpoint of the family in one of its real layouts (a
    :class:`TinyBuilder`: the formats it writes, a writer, its ``-o`` options), for
    ``openllm-hub tiny FAMILY OUT [--format F]``; what it writes must be detected as this family
    and run. None: the family offers none.
    """

    name: str
    formats: tuple[str, ...]
    detect: Callable[[Probe], Detection | None]
    load: Callable[[LoadRequest[Any]], Model]
    devices: tuple[DeviceSupport, ...]
    description: str = ""
    aliases: tuple[str, ...] = ()
    options: type[BaseModel] = NoOptions
    loadable: tuple[str, ...] | None = None
    converters: tuple[Converter, ...] = ()
    quantizers: tuple[Quantizer, ...] = ()
    lora_merger: LoraMerger | None = None
    model_names: tuple[ModelName, ...] = ()
    #: The family's chat templates, registered with it (each name must be free, as with the
    #: ``register_chat_templates`` hook, which stays for templates of no family).
    chat_templates: tuple[ChatTemplate, ...] = ()
    not_loadable_hint: Callable[[Path, str], str] | None = field(default=None, compare=False)
    launch: Callable[[LaunchRequest], int] | None = field(default=None, compare=False)
    run_format: Callable[[str, BaseModel], str] | None = field(default=None, compare=False)
    memory: Callable[[Path, str], ModelSpec] | None = field(default=None, compare=False)
    published_shapes: Mapping[str, ModelSpec] = field(default_factory=dict, compare=False)
    tiny: TinyBuilder | None = field(default=None, compare=False)

    def can_load(self, fmt: str) -> bool:
        return fmt in (self.loadable if self.loadable is not None else self.formats)
