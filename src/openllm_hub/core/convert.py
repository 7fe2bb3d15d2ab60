"""Converter: the interface a family implements to turn one on-disk format into another,
and :func:`verify_models`, the check that ``--verify`` runs on every conversion.

The core finds the converter for (detected source format, requested target), writes to a
temporary path that is renamed into place only when the converter (and verification, when
asked) succeeded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from openllm_hub.core.family import NoOptions
from openllm_hub.errors import InvalidParameterError

if TYPE_CHECKING:  # pragma: no cover
    from openllm_hub.core.model import Model

#: The fixed prompt both sides of a conversion are compared on.
VERIFY_PROMPT = "Building a website can be done in 10 simple steps:\n1."


@dataclass(frozen=True)
class ConvertRequest:
    src: Path
    dst: Path
    source_format: str
    outtype: str | None
    progress: bool
    options: Mapping[str, Any] = field(default_factory=dict)


class ConverterOptions(BaseModel):
    """Base of a converter's declared options (``-o KEY=VALUE`` of ``openllm-hub convert``):
    unknown names are refused; numbers given for a text option are taken as text. Declare
    each option as ``T | None = None`` when the converter picks its default itself."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


@dataclass(frozen=True)
class Converter:
    """Converts ``source`` format to ``target`` format for one family.

    ``run`` writes the complete output at ``request.dst`` (a temporary path: a file, or an
    existing empty folder when ``output_is_dir``). ``verify_bounds`` maps each outtype to
    the largest max-abs logit difference (relative to the source's logit range) that
    ``--verify`` accepts; for ``exact_outtypes`` (lossless ones, e.g. f32) the greedy tokens
    must also be identical, while for lossy ones a near-tie may flip a token, so their
    agreement is reported but only the bound decides. ``source_load_options`` are passed to
    ``load()`` when the source side is loaded for verification. ``options`` is the pydantic
    model of the options the converter takes (default: none); :meth:`validate_options` checks
    what the user gave against it before anything is written, so ``-o bogus=1`` is refused by
    name, and ``run`` gets the validated values in ``request.options``.
    """

    source: str
    target: str
    run: Callable[[ConvertRequest], None]
    outtypes: tuple[str, ...] = ()
    default_outtype: str | None = None
    output_is_dir: bool = False
    verify_bounds: Mapping[str, float] = field(default_factory=dict)
    exact_outtypes: tuple[str, ...] = ()
    source_load_options: Mapping[str, Any] = field(default_factory=dict)
    target_load_options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    options: type[BaseModel] = NoOptions

    def validate_options(self, options: Mapping[str, Any] | None, *, where: str = "-o/--option") -> dict[str, Any]:
        """``options`` checked against :attr:`options`: the values given (validated and
        coerced; ``None`` ones dropped so the converter's own default applies), or an
        :class:`InvalidParameterError` naming each unknown or invalid option."""
        try:
            model = self.options(**dict(options or {}))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors())
            names = list(self.options.model_fields)
            raise InvalidParameterError(
                f"invalid option for the {self.source} -> {self.target} converter: {problems}", where=where,
                fix=("its options: " + ", ".join(names)) if names else "this converter takes no options; drop -o",
            ) from None
        return model.model_dump(exclude_none=True)


@dataclass(frozen=True)
class VerifyReport:
    """Result of comparing two models on the same ids."""

    max_abs_diff: float
    logit_scale: float
    relative_diff: float
    argmax_agree: float
    greedy_equal: bool
    greedy_a: tuple[int, ...]
    greedy_b: tuple[int, ...]
    bound: float | None = None
    require_greedy: bool = True

    @property
    def passed(self) -> bool:
        """Within the bound (and greedy-identical where required). A report without a bound
        never passes: a verification that cannot fail proves nothing."""
        if self.bound is None:
            return False
        return self.relative_diff <= self.bound and (self.greedy_equal or not self.require_greedy)

    def summary(self) -> str:
        verdict = " FAIL (no bound)" if self.bound is None else (" PASS" if self.passed else " FAIL")
        return (f"max |logit diff| {self.max_abs_diff:.3g} ({self.relative_diff:.3g} of logit range "
                f"{self.logit_scale:.3g}{'' if self.bound is None else f', bound {self.bound:.3g}'}); "
                f"argmax agreement {self.argmax_agree:.0%}; greedy tokens "
                f"{'identical' if self.greedy_equal else 'differ'}{verdict}")


def verify_models(a: Model, b: Model, *, prompt: str = VERIFY_PROMPT, greedy_tokens: int = 16,
                  bound: float | None = None, ids: Sequence[int] | None = None,
                  require_greedy: bool = True) -> VerifyReport:
    """Compare ``b`` against reference ``a``: logits on the same ids (tokenized by ``a``) and
    greedy continuations of ``prompt``."""
    import numpy as np

    ids = list(ids) if ids is not None else a.tokenize(prompt)
    la = np.asarray(a.logits(ids), dtype=np.float64)
    lb = np.asarray(b.logits(ids), dtype=np.float64)
    if la.shape != lb.shape:
        from openllm_hub.errors import ConversionError

        raise ConversionError(f"logit shapes differ: {la.shape} vs {lb.shape}", where="verify")
    diff = float(np.max(np.abs(la - lb)))
    scale = float(np.max(la) - np.min(la)) or 1.0
    agree = float(np.mean(np.argmax(la, axis=-1) == np.argmax(lb, axis=-1)))
    params: dict[str, Any] = {"max_new_tokens": greedy_tokens, "temperature": 0.0, "repeat_penalty": 1.0, "seed": 0}
    ga = a._collect(a._stream_ids(list(ids), a.generation_defaults.build(**params))).token_ids
    gb = b._collect(b._stream_ids(list(ids), b.generation_defaults.build(**params))).token_ids
    return VerifyReport(diff, scale, diff / scale, agree, ga == gb, ga, gb, bound, require_greedy)
