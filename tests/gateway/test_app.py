"""The app's router: a ``/v1/`` or ``/v2/`` path goes straight to the proxy's catch-all
(no walk of the resources), and that is exactly where aiohttp's own walk sends it."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.web_urldispatcher import UrlDispatcher
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.config import parse_config
from gateway.testing import mocked_request

_SEGMENT = st.text(alphabet=st.sampled_from("abcxyz_019ABC-.%2Fhealthz~"), min_size=0, max_size=12)
_PATHS = st.builds(
    lambda version, segments: "/" + version + "/" + "/".join(segments),
    st.sampled_from(["v1", "v2"]),
    st.lists(_SEGMENT, min_size=0, max_size=4),
)


async def _routes(app: web.Application, path: str) -> tuple[object, object]:
    """The route the app's router picks for ``GET path``, and the one aiohttp's walk of
    the resources picks (or the catch-all where it finds none, as the router does)."""
    router = app.router
    request = mocked_request("GET", path, app=app)
    direct = (await router.resolve(request)).route
    walked = await UrlDispatcher.resolve(router, request)
    return direct, walked.route if walked.http_exception is None else router.fallback  # type: ignore[attr-defined]


@settings(max_examples=200, deadline=None)
@given(path=_PATHS)
def test_a_stripe_path_goes_to_the_catch_all_as_the_walk_would_send_it(path: str) -> None:
    app = create_app(parse_config({}))
    direct, walked = asyncio.run(_routes(app, path))
    assert direct is walked
    assert direct is app.router.fallback  # type: ignore[attr-defined]


def test_a_route_added_later_is_matched_by_the_walk() -> None:
    app = create_app(parse_config({}))

    async def mine(request: web.Request) -> web.Response:
        return web.Response(text="mine")

    route = app.router.add_get("/v1/mine", mine)

    async def check() -> None:
        assert (await app.router.resolve(mocked_request("GET", "/v1/mine", app=app))).route is route
        other = await app.router.resolve(mocked_request("GET", "/v1/customers", app=app))
        assert other.route is app.router.fallback  # type: ignore[attr-defined]
        health = await app.router.resolve(mocked_request("GET", "/healthz", app=app))
        assert health.route is not app.router.fallback  # type: ignore[attr-defined]

    asyncio.run(check())
