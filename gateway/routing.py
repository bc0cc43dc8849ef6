"""Which Stripe host serves a path, so one gateway base URL can stand for all of them.

The SDKs talk to four hosts: ``api`` (almost everything), ``files`` (uploads, file
contents, quote PDFs), ``connect`` (OAuth) and ``meter_events`` (the v2 meter event
stream). Pointing every one of an SDK's base addresses at the gateway works because the
gateway sends each path to the host that serves it.
"""

from __future__ import annotations

import re

__all__ = ["UPSTREAM_NAMES", "upstream_for"]

UPSTREAM_NAMES = ("api", "files", "connect", "meter_events")

_FILES_GET = re.compile(r"^/v1/(?:files/[^/]+/contents|quotes/[^/]+/pdf)$")


def upstream_for(method: str, path: str) -> str | None:
    """The name of the upstream for ``method path``, or None when no Stripe host serves it."""
    if path.startswith("/v1/"):
        if path == "/v1/files" and method == "POST":
            return "files"
        if _FILES_GET.match(path):
            return "files"
        return "api"
    if path.startswith("/v2/"):
        if path == "/v2/billing/meter_event_stream":
            return "meter_events"
        return "api"
    if path.startswith("/oauth/"):
        return "connect"
    return None
