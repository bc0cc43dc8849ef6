"""Small validators shared by the plugins that parse their own ``[plugins.<name>]`` tables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from gateway.errors import ConfigError

__all__ = ["redis_url"]


def redis_url(table: Mapping[str, Any]) -> str:
    """The Redis URL of a ``redis`` backend: from the environment variable named by
    ``redis_url_env`` (it may hold a password), or ``redis_url`` when it has none."""
    if "redis_url_env" in table:
        name = table["redis_url_env"]
        url = os.environ.get(str(name), "")
        if not url:
            raise ConfigError("redis_url_env", f"environment variable {name} is not set or empty")
    elif "redis_url" in table:
        url = str(table["redis_url"])
        if "@" in url:
            raise ConfigError("redis_url", "has a password: put the URL in redis_url_env instead")
    else:
        raise ConfigError("backend", 'the "redis" backend needs redis_url_env or redis_url')
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("redis_url", "must start with redis://, rediss:// or unix://")
    return url
