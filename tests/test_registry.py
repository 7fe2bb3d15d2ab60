"""Plugin loading: entry points, API version, isolation of broken plugins, throwaway plugins."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

import openllm_hub
from openllm_hub import ChatTemplate, hookimpl
from openllm_hub.core.chat import get_template, template_names
from openllm_hub.core.device import DeviceSupport
from openllm_hub.core.family import Detection, Family
from openllm_hub.core.registry import get_registry
from openllm_hub.errors import NotFoundError, PluginError, UnknownFormatError


def _make_dist(site: Path, name: str, module_src: str) -> None:
    """Install a real (tiny) distribution with an openllm_hub entry point into ``site``."""
    (site / f"{name}.py").write_text(textwrap.dedent(module_src))
    info = site / f"{name}-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(f"[openllm_hub]\n{name} = {name}\n")


def _cli(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)  # same sources as here
    full_env = {**os.environ, "PYTHONPATH": path, **env}
    return subprocess.run([sys.executable, "-m", "openllm_hub.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=120)


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    _make_dist(site, "broken_import", "raise RuntimeError('boom at import')\n")
    _make_dist(site, "old_api", "OPENLLM_HUB_API_VERSION = 0\n")
    _make_dist(site, "raises_in_hook", """
        from openllm_hub import hookimpl
        OPENLLM_HUB_API_VERSION = 1
        @hookimpl
        def register_families(register):
            raise ValueError('hook exploded')
    """)
    return site


def test_broken_plugins_are_listed_and_others_work(site: Path, bigram_path: Path) -> None:
    res = _cli(site, "plugins", "--json")
    assert res.returncode == 0, res.stderr
    plugins = {p["name"]: p for p in json.loads(res.stdout)["plugins"]}
    assert "boom at import" in plugins["broken_import"]["error"]
    assert "API version 0" in plugins["old_api"]["error"]
    assert "hook exploded" in plugins["raises_in_hook"]["error"]
    assert plugins["bigram"]["error"] is None and plugins["bigram"]["families"] == ["bigram"]
    run = _cli(site, "run", str(bigram_path), "-p", "Once", "-n", "5", "--seed", "1")
    assert run.returncode == 0 and run.stdout.startswith("Once"), run.stderr


def test_plugin_filter(site: Path) -> None:
    res = _cli(site, "plugins", "--json", OPENLLM_HUB_PLUGINS="bigram")
    assert [p["name"] for p in json.loads(res.stdout)["plugins"]] == ["bigram"]


def test_failed_load_names_broken_plugins(site: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 64)
    res = _cli(site, "info", str(junk))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no installed family recognises" in lines[0] and "broken_import" in lines[0]


class _Throwaway:
    """An in-process plugin registering a family that recognises a marker file."""

    OPENLLM_HUB_API_VERSION = 1

    def __init__(self, name: str, confidence: float) -> None:
        self.name, self.confidence = name, confidence

    @hookimpl
    def register_families(self, register: Callable[[Family], None]) -> None:
        def detect(probe: object) -> Detection | None:
            path = probe.path  # type: ignore[attr-defined]
            if path.is_file() and path.read_bytes().startswith(b"MARKER"):
                return Detection("marker", self.confidence, "starts with MARKER")
            return None

        register(Family(name=self.name, formats=("marker",), detect=detect,
                        load=lambda req: SimpleNamespace(req=req),  # type: ignore[arg-type,return-value]
                        devices=(DeviceSupport("cpu", ("fp32",)),)))


@pytest.fixture()
def marker(tmp_path: Path) -> Path:
    p = tmp_path / "model.any"
    p.write_bytes(b"MARKER...")
    return p


def test_throwaway_plugins_and_ambiguity(marker: Path) -> None:
    reg = get_registry()
    reg.register_plugin(_Throwaway("fam_a", 0.8), "fam_a")
    try:
        assert openllm_hub.load(marker).req.format == "marker"  # type: ignore[attr-defined]
        with pytest.raises(Exception, match="unknown"):
            openllm_hub.load(marker, unknown=1)
        reg.register_plugin(_Throwaway("fam_b", 0.78), "fam_b")
        with pytest.raises(UnknownFormatError, match="ambiguous"):
            openllm_hub.load(marker)
        assert openllm_hub.load(marker, family="fam_b").req.detection.confidence == 0.78  # type: ignore[attr-defined]
        with pytest.raises(PluginError):
            reg.register_plugin(_Throwaway("fam_a", 0.5), "fam_a")
    finally:
        reg.unregister_plugin("fam_a")
        reg.unregister_plugin("fam_b")
    assert "fam_a" not in reg.families
    with pytest.raises(UnknownFormatError) as err:
        openllm_hub.load(marker)
    assert "examined" in str(err.value) and "accepted formats" in str(err.value)


def test_unknown_family_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no installed plugin provides family 'nope'"):
        openllm_hub.load(tmp_path, family="nope")
    with pytest.raises(NotFoundError, match="neither an existing path nor a model name"):
        openllm_hub.load(tmp_path / "missing")


class _Templates:
    """An in-process plugin registering chat templates: through the hook, and with a family."""

    OPENLLM_HUB_API_VERSION = 1

    def __init__(self, hook_names: tuple[str, ...], family_names: tuple[str, ...] = (),
                 family: str | None = None) -> None:
        self.hook_names, self.family_names, self.family = hook_names, family_names, family

    @hookimpl
    def register_chat_templates(self, register: Callable[[ChatTemplate], None]) -> None:
        for name in self.hook_names:
            register(ChatTemplate(name=name, user="Q: {content}\nA:"))

    @hookimpl
    def register_families(self, register: Callable[[Family], None]) -> None:
        if self.family is not None:
            register(Family(name=self.family, formats=("marker",), detect=lambda probe: None,
                            load=lambda req: None,  # type: ignore[arg-type,return-value]
                            devices=(DeviceSupport("cpu", ("fp32",)),),
                            chat_templates=tuple(ChatTemplate(name=n) for n in self.family_names)))


def test_template_clash_marks_the_second_plugin_broken() -> None:
    reg = get_registry()
    reg.register_plugin(_Templates(("t-one",), ("t-fam",), family="tpl_fam_a"), "tpl_a")
    try:
        assert reg.plugins["tpl_a"].templates == ["t-one", "t-fam"]
        assert get_template("t-fam").name == "t-fam" and {"t-one", "t-fam"} <= set(template_names())
        for name, plugin, taken in [
            ("tpl_b", _Templates(("t-two", "t-one")), "'t-one' is already taken by 'tpl_a'"),
            ("tpl_c", _Templates((), ("t-fam",), family="tpl_fam_c"), "'t-fam' is already taken by 'tpl_a'"),
            ("tpl_d", _Templates(("plain",)), "'plain' is already taken by 'openllm-hub (built-in)'"),
            ("tpl_e", _Templates(("t-twice", "t-twice")), "'t-twice' is registered twice"),
        ]:
            with pytest.raises(PluginError, match=re.escape(taken)):
                reg.register_plugin(plugin, name)
            record = reg.plugins[name]
            assert record.error is not None and taken in record.error and record.templates == []
            # nothing of the broken plugin is registered; the first plugin's template is kept
            assert "t-two" not in reg.templates and "tpl_fam_c" not in reg.families
            assert reg.templates["t-one"].user == "Q: {content}\nA:"
        broken = {r.name for r in reg.broken()}
        assert {"tpl_b", "tpl_c", "tpl_d", "tpl_e"} <= broken and "tpl_a" not in broken
    finally:
        for name in ("tpl_a", "tpl_b", "tpl_c", "tpl_d", "tpl_e"):
            reg.unregister_plugin(name)
    assert not {"t-one", "t-two", "t-fam", "t-twice"} & set(template_names())
    assert "tpl_fam_a" not in reg.families and get_template("plain").name == "plain"
    with pytest.raises(NotFoundError, match="unknown chat template 't-one'"):
        get_template("t-one")


def test_builtin_templates_come_from_the_builtin_plugin(site: Path) -> None:
    reg = get_registry()
    (builtin,) = reg.builtins.values()
    assert builtin.error is None and builtin.templates == ["plain", "chatml"]
    assert not {"plain", "chatml"} & {t for r in reg.plugins.values() for t in r.templates}
    _make_dist(site, "steals_plain", """
        from openllm_hub import ChatTemplate, hookimpl
        OPENLLM_HUB_API_VERSION = 1
        @hookimpl
        def register_chat_templates(register):
            register(ChatTemplate(name="plain", user="hijacked {content}"))
    """)
    res = _cli(site, "plugins", "--json", "--all")
    assert res.returncode == 0, res.stderr
    plugins = {p["name"]: p for p in json.loads(res.stdout)["plugins"]}
    assert plugins["openllm-hub (built-in)"]["builtin"] and plugins["openllm-hub (built-in)"]["error"] is None
    assert "chat template name 'plain' is already taken" in plugins["steals_plain"]["error"]
    text = _cli(site, "plugins")
    assert "steals_plain 0.0.1  [BROKEN: PluginError: chat template name 'plain'" in text.stdout
    assert not any(line.startswith("openllm-hub (built-in)") for line in text.stdout.splitlines())
