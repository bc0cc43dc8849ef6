"""The documentation: every relative link in README.md and docs/ points at a file that
exists (and at a heading of it when it names one), and docs/hooks.md agrees with the hook
contract in gateway/hookspecs.py."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from gateway import hookspecs
from gateway.host import DEFAULT_PLUGINS

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def _text(page: Path) -> str:
    """A page without its code blocks and inline code (no links there)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", page.read_text()))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*_]", lambda m: "_" if m.group() == "_" else "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def _links() -> list[tuple[str, str]]:
    return [
        (str(page.relative_to(ROOT)), target)
        for page in PAGES
        for target in LINK.findall(_text(page))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


def test_the_pages_have_links() -> None:
    assert len(_links()) > 20


@pytest.mark.parametrize(("page", "target"), _links())
def test_every_relative_link_resolves(page: str, target: str) -> None:
    path, _, anchor = target.partition("#")
    source = ROOT / page
    dest = (source.parent / path).resolve() if path else source
    assert dest.exists(), f"{page}: {target}: no such file"
    assert ROOT in dest.parents or dest == ROOT, f"{page}: {target}: outside the repository"
    if anchor:
        assert dest.suffix == ".md", f"{page}: {target}: an anchor into a file that is not Markdown"
        assert anchor in _anchors(dest), f"{page}: {target}: no heading #{anchor} in {path}"


def test_every_docs_page_is_in_the_index() -> None:
    index = (ROOT / "docs" / "README.md").read_text()
    for page in PAGES:
        if page.parent != ROOT and page.name != "README.md":
            rel = page.relative_to(ROOT / "docs").as_posix()
            assert f"]({rel})" in index, f"docs/README.md does not link {rel}"


# --------------------------------------------------------------------------- docs/hooks.md


def _specs() -> list[tuple[str, str]]:
    """(phase, name) of every hook spec, in the order of gateway/hookspecs.py."""
    out: list[tuple[str, str]] = []
    phase = ""
    for line in Path(hookspecs.__file__).read_text().splitlines():
        if m := re.match(r"# -{10,} (.+)$", line):
            phase = {"a request": "request"}.get(m.group(1), m.group(1))
        elif m := re.match(r"def (gateway_\w+)\(", line):
            out.append((phase, m.group(1)))
    return out


def _hook_rows() -> list[list[str]]:
    text = (ROOT / "docs" / "hooks.md").read_text()
    return [
        [cell.strip() for cell in line.strip("|").split(" | ")]
        for line in text.splitlines()
        if re.match(r"\| \w[\w-]* \| `gateway_", line)
    ]


def test_hookspecs_has_specs() -> None:
    names = [name for _, name in _specs()]
    assert len(names) >= 15 and "gateway_request" in names
    for name in names:
        assert hasattr(getattr(hookspecs, name), "stripe_gateway_spec")


def test_the_hook_table_lists_every_spec_in_order_and_phase() -> None:
    rows = [(row[0], row[1].strip("`").split("(")[0]) for row in _hook_rows()]
    assert rows == _specs()


def test_the_hook_table_agrees_with_each_spec() -> None:
    for _phase, call, fires, early, may_await, raises in _hook_rows():
        name, _, args = call.strip("`").rstrip(")").partition("(")
        spec = getattr(hookspecs, name)
        params = [p for p in inspect.signature(spec).parameters if p]
        assert [a.strip() for a in args.split(",") if a.strip()] == params, name
        assert fires, name
        assert early.startswith("yes") == ("*Early answer.*" in (spec.__doc__ or "")), name
        assert may_await in ("yes", "no"), name
        assert (may_await == "yes") == (spec.__annotations__["return"] == "MaybeAwaitable"), name
        assert raises.startswith("**fails closed**") == hookspecs.fails_closed_hook(name), name


def test_every_hook_named_in_the_docs_exists() -> None:
    names = {name for _, name in _specs()}
    for page in PAGES:
        for hook in set(re.findall(r"\bgateway_[a-z_]+(?=[`(])", page.read_text())):
            if hook not in {"gateway_started"}:  # a log event, not a hook
                assert hook in names, f"{page.relative_to(ROOT)}: no hook {hook}"


def test_the_registration_order_is_the_hosts() -> None:
    text = (ROOT / "docs" / "writing-plugins.md").read_text()
    (order,) = re.findall(r"`DEFAULT_PLUGINS` order \(`gateway/host\.py`:\s+([^)]*)\)", text)
    assert re.findall(r"`(\w+)`", order) == [name for name, _ in DEFAULT_PLUGINS]
