"""``--verify`` can always fail: a report without a bound is a failure, and a converter outtype
without a measured bound refuses ``verify=True`` up front (nothing written)."""

from __future__ import annotations

from pathlib import Path

import pytest

import openllm_hub
from openllm_hub.core.convert import VerifyReport
from openllm_hub.core.registry import get_registry
from openllm_hub.errors import InvalidParameterError
from openllm_hub.plugin import Converter, ConvertRequest, Detection, DeviceSupport, Family, Probe, hookimpl


def test_a_report_without_bound_never_passes() -> None:
    perfect = VerifyReport(0.0, 1.0, 0.0, 1.0, True, (1,), (1,), bound=None)
    assert not perfect.passed and "FAIL (no bound)" in perfect.summary()
    assert VerifyReport(0.0, 1.0, 0.0, 1.0, True, (1,), (1,), bound=1e-6).passed


def _copy(req: ConvertRequest) -> None:
    req.dst.write_bytes(req.src.read_bytes())


class Plugin:
    OPENLLM_HUB_API_VERSION = 1

    @staticmethod
    @hookimpl
    def register_families(register):  # type: ignore[no-untyped-def]
        def detect(probe: Probe) -> Detection | None:
            return Detection("unbound", 1.0, "test") if probe.path.suffix == ".unbound" else None

        register(Family(name="unbound-test", formats=("unbound",), detect=detect, load=lambda req: None,  # type: ignore[arg-type,return-value]
                        devices=(DeviceSupport("cpu", ("fp32",)),),
                        converters=(Converter("unbound", "unbound", _copy, outtypes=("exact", "lossy"),
                                              default_outtype="exact", verify_bounds={"exact": 0.0}),)))


def test_outtype_without_bound_refuses_verify(tmp_path: Path) -> None:
    reg = get_registry()
    reg.register_plugin(Plugin(), "unbound-test")
    try:
        src = tmp_path / "m.unbound"
        src.write_bytes(b"x")
        with pytest.raises(InvalidParameterError, match="no measured bound") as err:
            openllm_hub.convert(src, tmp_path / "out.unbound", to="unbound", outtype="lossy", verify=True)
        assert "exact" in str(err.value)  # names the outtypes it can verify
        assert not (tmp_path / "out.unbound").exists()
        # without --verify the same conversion runs
        openllm_hub.convert(src, tmp_path / "out.unbound", to="unbound", outtype="lossy")
        assert (tmp_path / "out.unbound").read_bytes() == b"x"
    finally:
        reg.unregister_plugin("unbound-test")


def test_every_installed_converter_has_a_bound_for_every_outtype() -> None:
    missing = [f"{fam.name}: {c.source}->{c.target} {o}" for fam in get_registry().families.values()
               for c in fam.converters for o in (c.outtypes or (c.default_outtype or "",))
               if o not in c.verify_bounds]
    assert not missing, missing
