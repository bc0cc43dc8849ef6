"""The package layout keeps imports flowing one way: plugins -> the gateway core.

``gateway/`` is the proxy core; ``gateway/serve/`` the process shell around it;
``gateway/redaction/`` and ``gateway/stores/`` engines only plugins use; ``plugins/`` the
built-in plugins. Every import is read from the source with :mod:`ast` (imports inside
functions and ``if TYPE_CHECKING:`` blocks included), so a new one that breaks the
direction fails here, not in a reader's head.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GATEWAY = REPO / "gateway"

#: the wings below the core; a module directly in gateway/ is core (the sandbox is the
#: top-level package sandbox/, usable alone)
WINGS = ("serve", "redaction", "stores", "webhooks", "console")
#: packages of the core itself, split into modules (held to the core's rules)
CORE_PACKAGES = ("upstream",)

#: core modules that import the process shell, and why it cannot be otherwise (for now)
CORE_IMPORTS_OF_SERVE = {
    # ``python -m gateway`` runs the command
    ("gateway/__main__.py", "gateway.serve.cli"),
    # the app factory wires the admin listener into the app's cleanup contexts
    ("gateway/app.py", "gateway.serve.admin"),
    # the app serves through its reloadable generations (config, plugin host, proxy)
    ("gateway/app.py", "gateway.serve.reload"),
    # gateway.testing builds the same generations as the app, without the server
    ("gateway/testing.py", "gateway.serve.reload"),
    # the GENERATIONS and RELOAD keys' types (under TYPE_CHECKING only)
    ("gateway/keys.py", "gateway.serve.reload"),
    # the public routes follow the generation serving (its type, under TYPE_CHECKING only)
    ("gateway/public.py", "gateway.serve.reload"),
}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports; ``from a import b`` counts as ``a`` and ``a.b``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def modules(where: Path) -> list[Path]:
    return sorted(where.rglob("*.py"))


def is_core(path: Path) -> bool:
    return path.parent == GATEWAY or (
        path.parent.parent == GATEWAY and path.parent.name in CORE_PACKAGES
    )


def under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_wings_are_packages() -> None:
    for wing in WINGS:
        assert (GATEWAY / wing / "__init__.py").is_file(), wing


def test_every_package_under_gateway_is_a_wing_or_part_of_the_core() -> None:
    packages = {path.parent.name for path in GATEWAY.glob("*/__init__.py")}
    assert packages == set(WINGS) | set(CORE_PACKAGES)


def test_the_core_packages_count_as_core() -> None:
    assert is_core(GATEWAY / "upstream" / "client.py")
    assert not is_core(GATEWAY / "serve" / "server.py")


def test_nothing_under_gateway_imports_plugins() -> None:
    offenders = {
        f"{path.relative_to(REPO)}: {module}"
        for path in modules(GATEWAY)
        for module in imported_modules(path)
        if under(module, "plugins")
    }
    assert not offenders


def test_the_core_imports_the_process_shell_only_where_listed() -> None:
    found = {
        (str(path.relative_to(REPO)), ".".join(module.split(".")[:3]))
        for path in modules(GATEWAY)
        if is_core(path)
        for module in imported_modules(path)
        if under(module, "gateway.serve")
    }
    # exactly the listed ones: a new import fails, and so does a listed one that went away
    assert found == CORE_IMPORTS_OF_SERVE


def test_the_engines_are_used_by_plugins_not_by_the_core_or_the_shell() -> None:
    offenders = {
        f"{path.relative_to(REPO)}: {module}"
        for path in modules(GATEWAY)
        if is_core(path) or path.parent.name == "serve"
        for module in imported_modules(path)
        if under(module, "gateway.redaction") or under(module, "gateway.stores")
    }
    assert not offenders


def test_the_engines_import_the_core_not_the_shell() -> None:
    offenders = {
        f"{path.relative_to(REPO)}: {module}"
        for wing in ("redaction", "stores", "webhooks", "console")
        for path in modules(GATEWAY / wing)
        for module in imported_modules(path)
        if under(module, "gateway.serve")
    }
    assert not offenders


def test_the_checker_sees_imports_in_functions_and_type_checking_blocks() -> None:
    # the checks above are only as good as this reader
    module = REPO / "gateway" / "keys.py"
    assert "gateway.serve.reload" in imported_modules(module)  # under TYPE_CHECKING
    cli = REPO / "gateway" / "serve" / "cli.py"
    assert "gateway.serve.workers.Supervisor" in imported_modules(cli)  # in a function


def test_the_sandbox_imports_nothing_from_the_gateway_or_the_plugins() -> None:
    offending = [
        (str(path.relative_to(REPO)), module)
        for path in modules(REPO / "sandbox")
        for module in imported_modules(path)
        if module.split(".")[0] in ("gateway", "plugins")
    ]
    assert offending == []
