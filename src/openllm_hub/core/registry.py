"""The plugin registry: entry points -> pluggy -> families, chat templates and commands.

Plugins are loaded once, on first use: first the core's built-in plugin
(:mod:`openllm_hub.core.builtin_plugin`, the generic chat templates), then the
``openllm_hub`` entry-point group (``OPENLLM_HUB_PLUGINS=a,b`` limits which). Each is loaded
and asked for its families and templates in isolation: one that fails to import, has the
wrong API version, raises in a hook or registers a family or template name another plugin
already took is recorded with its error (``openllm-hub plugins`` shows it), adds nothing, and
the rest keep working. Tests register throwaway plugins with :meth:`Registry.register_plugin`;
:meth:`Registry.unregister_plugin` removes everything a plugin added.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from openllm_hub.core import hookspecs
from openllm_hub.core.chat import MODEL_TEMPLATE, ChatTemplate
from openllm_hub.core.debug import debug_enabled
from openllm_hub.core.family import Family, ModelName
from openllm_hub.errors import InvalidParameterError, NotFoundError, PluginError

#: The plugin API this core implements; a plugin declares ``OPENLLM_HUB_API_VERSION``.
API_VERSION = 1
ENTRY_POINT_GROUP = "openllm_hub"
#: Modules registered as plugins before the entry points: the core's own (llm's default plugins).
BUILTIN_PLUGINS = ("openllm_hub.core.builtin_plugin",)
#: The owner recorded for templates added with :meth:`Registry.add_template` (no plugin).
NO_PLUGIN = "(registered in-process)"


@dataclass
class PluginRecord:
    """What is known about one plugin: where it came from, what it added, what broke."""

    name: str
    version: str | None = None
    distribution: str | None = None
    module: str | None = None
    families: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    builtin: bool = False
    plugin: object | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "plugin"}


class Registry:
    """Holds the plugin manager and everything plugins registered.

    ``plugins`` are the installed (and in-process) plugins, ``builtins`` the core's own;
    ``families`` and ``templates`` are keyed by name, each name owned by one plugin.
    """

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginRecord] = {}
        self.builtins: dict[str, PluginRecord] = {}
        self.families: dict[str, Family] = {}
        self.templates: dict[str, ChatTemplate] = {}
        self._aliases: dict[str, str] = {}
        self._template_owners: dict[str, str] = {}

    # ---- loading -------------------------------------------------------------------
    def load_builtins(self) -> None:
        """Register the core's built-in plugins (:data:`BUILTIN_PLUGINS`) like any plugin."""
        import importlib

        for module_name in BUILTIN_PLUGINS:
            module = importlib.import_module(module_name)
            name = getattr(module, "NAME", module_name)
            record = PluginRecord(name=name, module=module_name, builtin=True)
            self._add(module, record)

    def load_entry_points(self) -> None:
        wanted = os.environ.get("OPENLLM_HUB_PLUGINS")
        allow = None if wanted is None else {w.strip() for w in wanted.split(",") if w.strip()}
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if allow is not None and ep.name not in allow:
                continue
            record = PluginRecord(name=ep.name, module=ep.value)
            if ep.dist is not None:
                record.distribution, record.version = ep.dist.metadata["Name"], ep.dist.version
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - isolation of broken plugins
                record.error = f"import failed: {type(exc).__name__}: {exc}"
                self.plugins[ep.name] = record
                continue
            self._add(obj, record)

    def register_plugin(self, plugin: object, name: str, *, version: str | None = None) -> PluginRecord:
        """Register an in-process plugin (a module or object with hook implementations)."""
        if name in self.plugins or name in self.builtins:
            raise PluginError(f"a plugin named {name!r} is already registered", where="registry")
        record = PluginRecord(name=name, version=version, module=getattr(plugin, "__name__", repr(plugin)))
        self._add(plugin, record)
        if record.error:
            raise PluginError(record.error, where=f"plugin {name}")
        return record

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin and every family and chat template it registered."""
        record = self.plugins.pop(name, None) or self.builtins.pop(name, None)
        if record is None:
            return
        for fam in record.families:
            family = self.families.pop(fam, None)
            if family is not None:
                for alias in (family.name, *family.aliases):
                    self._aliases.pop(alias.lower(), None)
        for tpl in record.templates:
            if self._template_owners.get(tpl) == record.name:
                self.templates.pop(tpl, None)
                self._template_owners.pop(tpl, None)
        if record.plugin is not None and self.pm.is_registered(record.plugin):
            self.pm.unregister(record.plugin)

    def _add(self, plugin: object, record: PluginRecord) -> None:
        (self.builtins if record.builtin else self.plugins)[record.name] = record
        declared = getattr(plugin, "OPENLLM_HUB_API_VERSION", None)
        if declared != API_VERSION:
            record.error = (f"plugin API version {declared!r} is not supported (this openllm-hub speaks "
                            f"{API_VERSION}); upgrade the plugin or openllm-hub")
            return
        try:
            self.pm.register(plugin, name=record.name)
        except Exception as exc:  # noqa: BLE001
            record.error = f"registration failed: {type(exc).__name__}: {exc}"
            return
        record.plugin = plugin
        record.hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
        fams: list[Family] = []
        tpls: list[ChatTemplate] = []
        try:
            self._call(plugin, "register_families", register=fams.append)
            self._call(plugin, "register_chat_templates", register=tpls.append)
            for fam in fams:
                self._check_family(fam)
                tpls.extend(fam.chat_templates)
            self._check_templates(tpls)
        except Exception as exc:  # noqa: BLE001
            record.error = f"{type(exc).__name__}: {exc}"
            record.error += "\n" + traceback.format_exc(limit=-3) if debug_enabled() else ""
            self.pm.unregister(plugin)
            record.plugin = None
            return
        for fam in fams:
            self.families[fam.name] = fam
            for alias in (fam.name, *fam.aliases):
                self._aliases[alias.lower()] = fam.name
            record.families.append(fam.name)
        for tpl in tpls:
            self.templates[tpl.name] = tpl
            self._template_owners[tpl.name] = record.name
            record.templates.append(tpl.name)

    def _call(self, plugin: object, hook: str, **kwargs: Any) -> list[Any]:
        """Call one plugin's implementation of ``hook`` (so errors are attributable)."""
        caller = getattr(self.pm.hook, hook)
        out = []
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin:
                out.append(impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames}))
        return out

    def _check_family(self, fam: Family) -> None:
        if not isinstance(fam, Family):
            raise PluginError(f"register_families registered {type(fam).__name__}, not a Family")
        for alias in (fam.name, *fam.aliases):
            if alias.lower() in self._aliases:
                raise PluginError(f"family name {alias!r} is already taken by {self._aliases[alias.lower()]!r}")

    def _check_templates(self, tpls: list[ChatTemplate]) -> None:
        """Each name once: a name another plugin took (or this plugin gives twice) is an error."""
        seen: set[str] = set()
        for tpl in tpls:
            if not isinstance(tpl, ChatTemplate):
                raise PluginError(f"register_chat_templates registered {type(tpl).__name__}, not a ChatTemplate")
            if tpl.name == MODEL_TEMPLATE:
                raise PluginError(f"chat template name {tpl.name!r} is reserved for a model's own template")
            if tpl.name in self._template_owners:
                raise PluginError(f"chat template name {tpl.name!r} is already taken by "
                                  f"{self._template_owners[tpl.name]!r}")
            if tpl.name in seen:
                raise PluginError(f"chat template name {tpl.name!r} is registered twice")
            seen.add(tpl.name)

    # ---- templates outside plugins ------------------------------------------------------
    def add_template(self, template: ChatTemplate, *, replace: bool = False) -> None:
        """Register ``template`` outside any plugin (tests, scripts). A different template
        under a taken name is refused unless ``replace``; the same one again is a no-op."""
        if not isinstance(template, ChatTemplate):
            raise InvalidParameterError(f"expected a ChatTemplate, got {type(template).__name__}",
                                        where="chat templates")
        if template.name == MODEL_TEMPLATE:
            raise InvalidParameterError(f"chat template name {template.name!r} is reserved for a model's own "
                                        "template", where="chat templates", fix="pick another name")
        known = self.templates.get(template.name)
        if known is not None and known != template and not replace:
            raise InvalidParameterError(
                f"chat template {template.name!r} is already registered by {self._template_owners[template.name]!r}",
                where="chat templates", fix="pick another name")
        if known is None or known != template:
            self.remove_template(template.name)
            self.templates[template.name] = template
            self._template_owners[template.name] = NO_PLUGIN

    def remove_template(self, name: str) -> None:
        """Forget the template ``name`` (whoever registered it); nothing happens when unknown."""
        self.templates.pop(name, None)
        owner = self._template_owners.pop(name, None)
        record = None if owner is None else self.plugins.get(owner) or self.builtins.get(owner)
        if record is not None and name in record.templates:
            record.templates.remove(name)

    # ---- queries -------------------------------------------------------------------
    def template(self, name: str) -> ChatTemplate:
        """The chat template ``name``; the error lists the known names."""
        try:
            return self.templates[name]
        except KeyError:
            raise NotFoundError(
                f"unknown chat template {name!r}",
                where="chat templates",
                fix=f"use one of: {', '.join(self.template_names())}",
            ) from None

    def template_names(self) -> list[str]:
        return sorted(self.templates)

    def family(self, name: str) -> Family:
        key = self._aliases.get(name.lower())
        if key is None:
            broken = [r for r in self.plugins.values() if r.error]
            hint = "" if not broken else "; broken plugins: " + ", ".join(f"{r.name} ({r.error})" for r in broken)
            raise NotFoundError(
                f"no installed plugin provides family {name!r}{hint}",
                where="plugins",
                fix=f"install its plugin (pip install openllm-hub-{name}); known families: "
                + (", ".join(sorted(self.families)) or "none"),
            )
        return self.families[key]

    def model_names(self) -> Iterator[tuple[Family, ModelName]]:
        for fam in self.families.values():
            for mn in fam.model_names:
                yield fam, mn

    def broken(self) -> list[PluginRecord]:
        return [r for r in (*self.builtins.values(), *self.plugins.values()) if r.error]

    def call_each(self, hook: str, **kwargs: Any) -> Iterator[tuple[PluginRecord, Any]]:
        """Call ``hook`` plugin by plugin (built-ins first), yielding (record, result or exception)."""
        for record in [*self.builtins.values(), *self.plugins.values()]:
            if record.plugin is None:
                continue
            try:
                for result in self._call(record.plugin, hook, **kwargs):
                    yield record, result
            except Exception as exc:  # noqa: BLE001
                yield record, exc


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loading the built-in plugin and the entry points on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
        _REGISTRY.load_builtins()
        _REGISTRY.load_entry_points()
    return _REGISTRY


def reset_registry() -> None:
    """Forget loaded plugins (tests; or after installing a plugin in a running process)."""
    global _REGISTRY
    if _REGISTRY is not None:
        for name in [*_REGISTRY.plugins, *_REGISTRY.builtins]:
            _REGISTRY.unregister_plugin(name)
    _REGISTRY = None

