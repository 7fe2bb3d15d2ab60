from __future__ import annotations

import pytest

from openllm_hub import GenerationConfig
from openllm_hub.errors import InvalidParameterError


def test_defaults_and_greedy() -> None:
    c = GenerationConfig()
    assert (c.temperature, c.top_k, c.top_p, c.repeat_penalty, c.repeat_last_n) == (0.8, 40, 0.95, 1.1, 64)
    assert GenerationConfig.build(temperature=0).greedy


@pytest.mark.parametrize("bad", [{"temprature": 1}, {"top_p": 0}, {"top_p": 1.5}, {"max_new_tokens": 0},
                                 {"stop": [""]}, {"seed": -1}, {"repeat_penalty": 0}])
def test_rejects_by_name(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidParameterError) as err:
        GenerationConfig.build(**bad)
    assert next(iter(bad)) in str(err.value)


def test_stop_accepts_a_string() -> None:
    assert GenerationConfig.build(stop="\n").stop == ("\n",)


def test_with_seed_fixes_a_seed() -> None:
    c = GenerationConfig().with_seed()
    assert c.seed is not None and c.with_seed().seed == c.seed


@pytest.mark.parametrize("field", ["temperature", "top_p", "repeat_penalty"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_named_as_such(field: str, value: float) -> None:
    with pytest.raises(InvalidParameterError, match=f"{field}: Input should be a finite number"):
        GenerationConfig.build(**{field: value})
