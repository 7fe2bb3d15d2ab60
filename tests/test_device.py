"""Device specs and placement decisions on described machines (data, not mocks)."""

from __future__ import annotations

import pytest

from openllm_hub.core.device import GPU, DeviceSupport, Machine, parse_device, plan_placement, probe_machine
from openllm_hub.errors import IncompatibleDeviceError, InvalidParameterError

CPU_ONLY = Machine(cpu_threads=2, gpus=(), gpu_note="no nvidia-smi on PATH")
TWO_GPUS = Machine(cpu_threads=16, gpus=(GPU(0, "A100", 40960, 40000), GPU(1, "A100", 40960, 40000)),
                   gpu_note="nvidia-smi reports 2 GPU(s)")
ROWS = (DeviceSupport("cuda", ("fp16", "bf16")), DeviceSupport("cpu", ("fp32", "bf16")))


@pytest.mark.parametrize(("spec", "kind", "blas", "ids"), [
    ("auto", "auto", False, ()), ("cpu", "cpu", False, ()), ("cpu:blas", "cpu", True, ()),
    ("cuda", "cuda", False, ()), ("cuda:1", "cuda", False, (1,)), ("CUDA:0,1", "cuda", False, (0, 1)),
])
def test_parse(spec: str, kind: str, blas: bool, ids: tuple[int, ...]) -> None:
    d = parse_device(spec)
    assert (d.kind, d.blas, d.gpu_ids) == (kind, blas, ids)


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:a", "cpu:mkl", ""])
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(InvalidParameterError, match="cannot parse device"):
        parse_device(bad)


def test_dtype_aliases() -> None:
    assert parse_device("cpu", dtype="bfloat16").dtype == "bf16"
    with pytest.raises(InvalidParameterError):
        parse_device("cpu", dtype="int3")


def test_auto_prefers_cuda_when_present() -> None:
    assert plan_placement(parse_device("auto"), ROWS, "x", TWO_GPUS).kind == "cuda"
    p = plan_placement(parse_device("auto"), ROWS, "x", CPU_ONLY)
    assert (p.kind, p.dtype) == ("cpu", "fp32") and "CPU" in p.reason


def test_refusals_say_why() -> None:
    with pytest.raises(IncompatibleDeviceError, match="no nvidia-smi"):
        plan_placement(parse_device("cuda"), ROWS, "x", CPU_ONLY)
    with pytest.raises(IncompatibleDeviceError, match="one GPU only"):
        plan_placement(parse_device("cuda:0,1"), ROWS, "x", TWO_GPUS)
    with pytest.raises(IncompatibleDeviceError, match="dtype fp16 not supported"):
        plan_placement(parse_device("cpu", dtype="fp16"), ROWS, "x", CPU_ONLY)
    with pytest.raises(IncompatibleDeviceError, match="no BLAS mode"):
        plan_placement(parse_device("cpu:blas"), ROWS, "x", CPU_ONLY)
    with pytest.raises(IncompatibleDeviceError, match="GPU 3 does not exist"):
        plan_placement(parse_device("cuda:3"), ROWS, "x", TWO_GPUS)


def test_availability_check_is_consulted() -> None:
    rows = (DeviceSupport("cpu", ("fp32",), blas=True, available=lambda: (False, "built without BLAS")),
            DeviceSupport("cpu", ("fp32",)))
    with pytest.raises(IncompatibleDeviceError, match="built without BLAS"):
        plan_placement(parse_device("cpu:blas"), rows, "x", CPU_ONLY)
    assert not plan_placement(parse_device("cpu"), rows, "x", CPU_ONLY).blas


def test_probe_this_machine() -> None:
    m = probe_machine()
    assert m.cpu_threads >= 1 and m.gpu_note
