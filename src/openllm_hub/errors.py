"""The one error hierarchy of openllm_hub.

Every error a user can cause derives from :class:`OpenLLMHubError` and carries three
things: *what* went wrong, *where* (a path, a parameter, a plugin), and *how to fix* it.
``str(err)`` renders them on one line, which is what the CLI prints.
"""

from __future__ import annotations

from pathlib import Path


class OpenLLMHubError(Exception):
    """Base class of every error openllm_hub raises on bad input or environment."""

    def __init__(self, what: str, *, where: str | Path | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = None if where is None else str(where)
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        """One line: ``what (where) -- fix``."""
        text = self.what
        if self.where:
            text += f" [{self.where}]"
        if self.fix:
            text += f"; fix: {self.fix}"
        return text


class NotFoundError(OpenLLMHubError):
    """A file, folder, model name, plugin or family does not exist."""


class UnknownFormatError(OpenLLMHubError):
    """No installed family recognises the input, or several do equally well."""


class CorruptFileError(OpenLLMHubError):
    """A file has the right kind but broken content (truncated, wrong magic, bad header)."""


class UnsafeCheckpointError(CorruptFileError):
    """A checkpoint would need code execution to load (pickle with callables)."""


class IncompatibleDeviceError(OpenLLMHubError):
    """The requested device or dtype cannot run this model here."""


class InvalidParameterError(OpenLLMHubError):
    """A generation parameter, load option, CLI flag or device spec is invalid."""


class ConversionError(OpenLLMHubError):
    """A conversion, quantization or merge failed, or its verification did not pass."""


class DestinationExistsError(OpenLLMHubError):
    """An output path already exists (or equals an input) and ``force`` was not given."""


class PluginError(OpenLLMHubError):
    """A plugin failed to import, has the wrong API version, or broke its contract."""


class ModelClosedError(OpenLLMHubError):
    """Work was asked of a model after :meth:`Model.close`."""


__all__ = [
    "ConversionError",
    "CorruptFileError",
    "DestinationExistsError",
    "IncompatibleDeviceError",
    "InvalidParameterError",
    "ModelClosedError",
    "NotFoundError",
    "OpenLLMHubError",
    "PluginError",
    "UnknownFormatError",
    "UnsafeCheckpointError",
]
