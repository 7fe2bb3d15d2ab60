"""GenerationConfig: the one set of sampling parameters shared by every plugin and by chat."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from openllm_hub.errors import InvalidParameterError


class GenerationConfig(BaseModel):
    """Sampling parameters, with llama.cpp's names and defaults where they exist.

    Unknown fields are rejected by name. ``temperature=0`` means greedy decoding. The same
    model, seed and parameters give the same text in every plugin.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # NaN/inf: "finite number"

    max_new_tokens: int = Field(128, ge=1, le=1_000_000, description="most tokens to generate")
    temperature: float = Field(0.8, ge=0.0, le=100.0, description="0 = greedy")
    top_k: int = Field(40, ge=0, description="keep the k most likely tokens; 0 = all")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="nucleus sampling mass")
    repeat_penalty: float = Field(1.1, gt=0.0, le=10.0, description="1.0 = off")
    repeat_last_n: int = Field(64, ge=0, description="window of recent tokens the penalty sees")
    stop: tuple[str, ...] = Field((), description="strings that end generation (not included in the text)")
    seed: int | None = Field(None, ge=0, lt=2**32, description="None = a fresh random seed per call")
    logprobs: bool = Field(False, description="report each generated token's log-probability (raw logits)")
    top_logprobs: int = Field(0, ge=0, le=20, description="also the most likely tokens at each position (0..20)")
    json_schema: dict[str, Any] | None = Field(None, description="the answer is JSON valid for this JSON schema")
    grammar: str | None = Field(None, description="the answer follows this Lark (llguidance) or GBNF grammar")
    json_object: bool = Field(False, description="the answer is one JSON object (any)")
    #: the constraint compiled for one model (openllm_hub.core.constrain.bind); not a parameter
    _constraint: Any = PrivateAttr(None)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_tuple(cls, value: Any) -> Any:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list):
            return tuple(value)
        return value

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(s == "" for s in value):
            raise ValueError("stop strings must not be empty")
        return value

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def wants_logprobs(self) -> bool:
        """Tokens are scored (see :mod:`openllm_hub.core.logprobs`): ``logprobs`` or ``top_logprobs > 0``."""
        return self.logprobs or self.top_logprobs > 0

    @property
    def constrained(self) -> bool:
        """The answer is constrained (see :mod:`openllm_hub.core.constrain`)."""
        return self.json_schema is not None or self.grammar is not None or self.json_object

    @classmethod
    def build(cls, base: GenerationConfig | None = None, **params: Any) -> GenerationConfig:
        """Validate ``params`` over ``base``; invalid input raises :class:`InvalidParameterError`."""
        merged = {**(base.model_dump() if base else {}), **params}
        try:
            return cls(**merged)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}" for err in exc.errors()
            )
            raise InvalidParameterError(
                f"invalid generation parameters: {problems}",
                where="GenerationConfig",
                fix=f"valid parameters: {', '.join(cls.model_fields)}",
            ) from None

    def with_seed(self) -> GenerationConfig:
        """Return a copy whose seed is fixed (a fresh random one if it was None)."""
        if self.seed is not None:
            return self
        import secrets

        return self.model_copy(update={"seed": secrets.randbelow(2**32)})
