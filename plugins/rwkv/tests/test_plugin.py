"""The plugin as the core sees it: registration, a light import, the engine report."""

from __future__ import annotations

import subprocess
import sys

from openllm_hub.core.registry import get_registry


def test_registered_family_and_templates() -> None:
    reg = get_registry()
    record = reg.plugins["rwkv"]
    assert record.error is None and record.families == ["rwkv"]
    assert {"rwkv-raven", "rwkv-world", "rwkv-qa", "rwkv-instruct"} <= set(record.templates)
    fam = reg.family("raven")  # an alias
    assert fam.name == "rwkv" and fam.formats == ("rwkv-pth", "hf")
    assert {(c.source, c.target) for c in fam.converters} == {("rwkv-pth", "hf"), ("hf", "rwkv-pth")}


def test_plugin_import_is_light() -> None:
    code = ("import sys, openllm_hub_rwkv.plugin, openllm_hub; openllm_hub.core.registry.get_registry(); "
            "heavy = [m for m in ('torch', 'rwkv', 'transformers', 'tokenizers', 'safetensors') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_report_engines() -> None:
    facts = next(r for rec, r in get_registry().call_each("report_engines") if rec.name == "rwkv")
    assert facts["rwkv"]["version"] == "0.8.32"
    assert "cpu fp32" in facts["rwkv"]["strategies"]
