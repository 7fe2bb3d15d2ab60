"""The public plugin API is the only door: plugins import ``openllm_hub.plugin`` (and the shared
``openllm_hub.engines``), never the core's modules, and no module imports another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import openllm_hub.plugin as api

REPO = Path(__file__).resolve().parents[1]
PLUGIN_SOURCES = sorted([*REPO.glob("plugins/*/src/**/*.py"), *REPO.glob("examples/*/src/**/*.py")])
ALL_SOURCES = sorted([*REPO.glob("src/**/*.py"), *PLUGIN_SOURCES, *REPO.glob("demo_train/src/**/*.py")])


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name, []) for a in node.names)
    return out


def test_sources_found() -> None:
    assert len(PLUGIN_SOURCES) > 40 and len(ALL_SOURCES) > len(PLUGIN_SOURCES)


@pytest.mark.parametrize("path", PLUGIN_SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_plugins_use_only_the_public_plugin_api(path: Path) -> None:
    allowed = ("openllm_hub.plugin", "openllm_hub.engines", "openllm_hub.testing")
    bad = [f"{path.name}:{line} {mod}" for line, mod, _ in _imports(path)
           if (mod == "openllm_hub" or mod.startswith("openllm_hub.")) and not mod.startswith(allowed)]
    assert not bad, bad


@pytest.mark.parametrize("path", ALL_SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_a_private_name_of_another(path: Path) -> None:
    own = ("openllm_hub", "openllm_hub_")
    bad = [f"{path.name}:{line} from {mod} import {n}" for line, mod, names in _imports(path)
           if mod.startswith(own) for n in names if n.startswith("_") and not n.startswith("__")]
    bad += [f"{path.name}:{line} import {mod}" for line, mod, _ in _imports(path)
            if mod.startswith(own) and any(part.startswith("_") and not part.startswith("__")
                                           for part in mod.split("."))]
    assert not bad, bad


def test_every_exported_name_exists() -> None:
    for name in api.__all__:
        assert getattr(api, name) is not None, name
