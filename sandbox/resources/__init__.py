"""The sandbox's resources: each module registers its endpoints on :data:`REGISTRY`.

Every module in this package whose name does not start with ``_`` is imported (and so
registered) when the package is; ``_`` modules hold helpers that resource modules import.
"""

from __future__ import annotations

import importlib
import pkgutil

from sandbox.core import Registry

__all__ = ["REGISTRY"]

REGISTRY = Registry()

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")
