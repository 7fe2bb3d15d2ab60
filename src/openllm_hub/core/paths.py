"""Where openllm_hub keeps user files: the config folder (model names) and the cache.

``OPENLLM_HUB_CONFIG_DIR`` and ``OPENLLM_HUB_CACHE_DIR`` override the platform defaults.
"""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    env = os.environ.get("OPENLLM_HUB_CONFIG_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_config_dir("openllm-hub"))


def cache_dir() -> Path:
    env = os.environ.get("OPENLLM_HUB_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("openllm-hub"))
