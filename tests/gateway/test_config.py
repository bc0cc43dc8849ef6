"""The config loader: TOML in, a validated GatewayConfig out, or one ConfigError naming the key."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from gateway.config import ENV_OVERRIDES, GatewayConfig, load_config, parse_config
from gateway.errors import ConfigError
from gateway.host import DEFAULT_PLUGINS as _DEFAULT_PLUGINS
from gateway.host import PluginHost
from tests.helpers import (
    ANALYTICS_KEY,
    BILLING_KEY,
    BILLING_UPSTREAM_KEY,
    PASSTHROUGH_KEY,
    digest,
)

BUILTINS = [name for name, _ in _DEFAULT_PLUGINS]
BUILTIN_LIST = ", ".join(BUILTINS)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.toml"

BILLING_DIGEST = digest(BILLING_KEY)
ANALYTICS_DIGEST = digest(ANALYTICS_KEY)
ENVIRON = {"BILLING_STRIPE_KEY": BILLING_UPSTREAM_KEY}


def write(tmp_path: Path, text: str, name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> GatewayConfig:
    return load_config(write(tmp_path, text), environ=ENVIRON if environ is None else environ)


def config_error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, environ)
    return info.value


def team_toml(name: str = "billing", key_digest: str = BILLING_DIGEST, extra: str = "") -> str:
    return f'[[teams]]\nname = "{name}"\nkey_sha256 = ["{key_digest}"]\n{extra}\n'


def plugin_host_error(tmp_path: Path, text: str) -> ConfigError:
    config = load(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        PluginHost(config)
    return info.value


# --------------------------------------------------------------------------- valid files


def test_minimal_config_with_one_team_loads(tmp_path: Path) -> None:
    config = load(tmp_path, team_toml(extra='upstream_key_env = "BILLING_STRIPE_KEY"'))
    assert [t.name for t in config.teams] == ["billing"]
    team = config.teams[0]
    assert team.key_sha256 == [BILLING_DIGEST]
    assert team.upstream_key_env == "BILLING_STRIPE_KEY"
    assert team.upstream_key is not None
    assert team.upstream_key.get_secret_value() == BILLING_UPSTREAM_KEY


def test_empty_file_gives_documented_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    config = load_config(path, environ={})
    assert config.source == str(path)
    server = config.server
    assert (server.host, server.port) == ("127.0.0.1", 8080)
    assert server.drain_timeout == 30.0
    assert server.max_body_bytes == 32 * 1024 * 1024
    assert server.max_header_bytes == 8190
    assert (server.header_timeout, server.keepalive_timeout) == (20.0, 75.0)
    assert server.max_connections == 10000
    assert server.uvloop is True
    upstream = config.upstream
    assert upstream.api == "https://api.stripe.com"
    assert upstream.files == "https://files.stripe.com"
    assert upstream.connect == "https://connect.stripe.com"
    assert upstream.meter_events == "https://meter-events.stripe.com"
    assert (upstream.connect_timeout, upstream.read_timeout) == (10.0, 80.0)
    assert upstream.max_connections == 100
    assert config.plugins.load == []
    assert config.plugins.disable == []
    assert config.plugins.tables() == {}
    assert config.teams == []


def test_team_defaults_allow_everything_and_forward_the_presented_key(tmp_path: Path) -> None:
    team = load(tmp_path, team_toml("direct", digest(PASSTHROUGH_KEY))).teams[0]
    assert team.allow == ["* /**"]
    assert team.stripe_accounts is None
    assert team.upstream_key_env is None
    assert team.upstream_key_file is None
    assert team.upstream_key is None


def test_upstream_url_trailing_slash_is_removed(tmp_path: Path) -> None:
    config = load(tmp_path, '[upstream]\napi = "http://127.0.0.1:12345/"\n')
    assert config.upstream.api == "http://127.0.0.1:12345"


def test_plugin_tables_are_kept_for_the_plugins(tmp_path: Path) -> None:
    config = load(tmp_path, '[plugins.audit]\npath = "-"\n')
    assert config.plugins.tables() == {"audit": {"path": "-"}}


def test_config_is_immutable(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    with pytest.raises(ValidationError):
        config.server.port = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- unreadable files


def test_invalid_toml_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\nport = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.path == str(path)
    assert "invalid TOML" in info.value.reason
    assert str(path) in str(info.value)
    assert "line 1" in info.value.reason


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.path == str(path)
    assert "cannot read config file" in info.value.reason


def test_non_utf8_config_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[server]\nhost = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.path == str(path)
    assert "not UTF-8" in info.value.reason


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("x = 1\n", "x"),
        ('source = "somewhere"\n', "source"),
        ("[server]\nx = 1\n", "server.x"),
        ("[server]\nprot = 8080\n", "server.prot"),
        ("[upstream]\nx = 1\n", "upstream.x"),
        (team_toml(extra="x = 1"), "teams[0].x"),
        (
            team_toml() + team_toml("other", ANALYTICS_DIGEST, 'alow = ["GET /v1/**"]'),
            "teams[1].alow",
        ),
        ("[plugins]\nx = 1\n", "plugins.x"),
    ],
    ids=["top-level", "source", "server", "server-typo", "upstream", "team0", "team1", "plugins"],
)
def test_unknown_key_is_reported_with_its_exact_path(tmp_path: Path, text: str, path: str) -> None:
    error = config_error(tmp_path, text)
    assert error.path == path
    assert error.reason.startswith("unknown key")
    assert str(error).startswith(f"{path}: unknown key")


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("text", "path", "reason"),
    [
        ("[server]\nport = 65536\n", "server.port", "must be a whole number between 0 and 65535"),
        ("[server]\nport = -1\n", "server.port", "between 0 and 65535"),
        (
            '[server]\nport = "http"\n',
            "server.port",
            "whole number between 0 and 65535, not a string",
        ),
        ("[server]\ndrain_timeout = 0\n", "server.drain_timeout", "must be a number > 0"),
        ("[server]\nmax_body_bytes = 0\n", "server.max_body_bytes", "must be a whole number > 0"),
        (
            "[server]\nmax_header_bytes = 10\n",
            "server.max_header_bytes",
            "between 1024 and 1048576",
        ),
        ("[server]\nheader_timeout = 0\n", "server.header_timeout", "> 0"),
        ("[server]\nkeepalive_timeout = -1\n", "server.keepalive_timeout", "> 0"),
        ("[server]\nmax_connections = -1\n", "server.max_connections", ">= 0"),
        (
            "[server]\nmax_connections = true\n",
            "server.max_connections",
            "whole number >= 0, not true",
        ),
        ('[server]\nuvloop = "maybe"\n', "server.uvloop", "true or false, not a string"),
        ('[upstream]\napi = "api.stripe.com"\n', "upstream.api", "http(s) URL"),
        ('[upstream]\nfiles = "ftp://files.stripe.com"\n', "upstream.files", "http(s) URL"),
        (
            '[upstream]\nconnect = "https://connect.stripe.com/oauth"\n',
            "upstream.connect",
            "no path",
        ),
        ('[upstream]\nmeter_events = "https://x?y=1"\n', "upstream.meter_events", "http(s) URL"),
        ("[upstream]\nread_timeout = -1\n", "upstream.read_timeout", "must be a number > 0"),
        (
            "[upstream]\nmax_connections = -1\n",
            "upstream.max_connections",
            "must be a whole number >= 0",
        ),
        ("server = 1\n", "server", "must be a table"),
        ('teams = "billing"\n', "teams", "must be a list, not a string"),
        (team_toml("no spaces"), "teams[0].name", "must match the pattern"),
        ('[[teams]]\nkey_sha256 = ["' + BILLING_DIGEST + '"]\n', "teams[0].name", "is required"),
        ('[[teams]]\nname = "billing"\n', "teams[0].key_sha256", "is required"),
        (
            '[[teams]]\nname = "b"\nkey_sha256 = []\n',
            "teams[0].key_sha256",
            "must have at least 1 entry",
        ),
        (team_toml(key_digest="abc123"), "teams[0].key_sha256[0]", "64 lowercase hex"),
        (
            team_toml(key_digest=BILLING_DIGEST.upper()),
            "teams[0].key_sha256[0]",
            "64 lowercase hex",
        ),
        (team_toml(key_digest=BILLING_KEY), "teams[0].key_sha256[0]", "not a key"),
        (team_toml(key_digest=BILLING_DIGEST[:-1] + "g"), "teams[0].key_sha256[0]", "hex"),
        (team_toml(extra='allow = ["FETCH /x"]'), "teams[0].allow[0]", "unknown method 'FETCH'"),
        (team_toml(extra='allow = ["GET /v1/**", "GET x"]'), "teams[0].allow[1]", "start with '/'"),
        (team_toml(extra='allow = ["GET x"]'), "teams[0].allow[0]", "must start with '/'"),
        (team_toml(extra='allow = ["GET"]'), "teams[0].allow[0]", "'METHOD /path/glob'"),
        (team_toml(extra='allow = ["GET /a /b"]'), "teams[0].allow[0]", "'METHOD /path/glob'"),
        (
            team_toml(extra='stripe_accounts = "acct_1"'),
            "teams[0].stripe_accounts",
            "must be a list",
        ),
        ('[plugins]\nload = "mod"\n', "plugins.load", "must be a list"),
    ],
)
def test_bad_value_is_reported_with_path_and_reason(
    tmp_path: Path, text: str, path: str, reason: str
) -> None:
    error = config_error(tmp_path, text)
    assert error.path == path
    assert reason in error.reason
    assert str(error) == f"{path}: {error.reason}"


def test_duplicate_team_names_are_rejected(tmp_path: Path) -> None:
    error = config_error(tmp_path, team_toml("billing") + team_toml("billing", ANALYTICS_DIGEST))
    assert error.path == "teams[1].name"
    assert "duplicate team name 'billing'" in error.reason


def test_duplicate_key_digest_across_teams_names_the_first_team(tmp_path: Path) -> None:
    error = config_error(tmp_path, team_toml("billing") + team_toml("analytics"))
    assert error.path == "teams[1].key_sha256[0]"
    assert "already registered to team 'billing'" in error.reason


def test_duplicate_key_digest_within_one_team_is_rejected(tmp_path: Path) -> None:
    text = f'[[teams]]\nname = "billing"\nkey_sha256 = ["{BILLING_DIGEST}", "{BILLING_DIGEST}"]\n'
    error = config_error(tmp_path, text)
    assert error.path == "teams[0].key_sha256[1]"
    assert "already registered to team 'billing'" in error.reason


# --------------------------------------------------------------------------- upstream keys


def test_missing_upstream_key_env_var_names_the_team_index(tmp_path: Path) -> None:
    text = team_toml("direct", digest(PASSTHROUGH_KEY)) + team_toml(
        "billing", BILLING_DIGEST, 'upstream_key_env = "NOT_SET_ANYWHERE"'
    )
    error = config_error(tmp_path, text, environ={})
    assert error.path == "teams[1].upstream_key_env"
    assert "NOT_SET_ANYWHERE" in error.reason
    assert "not set" in error.reason


def test_empty_upstream_key_env_var_is_rejected(tmp_path: Path) -> None:
    text = team_toml(extra='upstream_key_env = "BILLING_STRIPE_KEY"')
    error = config_error(tmp_path, text, environ={"BILLING_STRIPE_KEY": ""})
    assert error.path == "teams[0].upstream_key_env"
    assert "not set or empty" in error.reason


def test_upstream_key_env_is_read_from_the_given_environ_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BILLING_STRIPE_KEY", "sk_test_fromprocessenviron000001")
    text = team_toml(extra='upstream_key_env = "BILLING_STRIPE_KEY"')
    error = config_error(tmp_path, text, environ={})
    assert error.path == "teams[0].upstream_key_env"


def test_upstream_key_env_defaults_to_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_TEST_BILLING_STRIPE_KEY", BILLING_UPSTREAM_KEY)
    path = write(tmp_path, team_toml(extra='upstream_key_env = "GW_TEST_BILLING_STRIPE_KEY"'))
    team = load_config(path).teams[0]
    assert team.upstream_key is not None
    assert team.upstream_key.get_secret_value() == BILLING_UPSTREAM_KEY


def test_upstream_key_with_white_space_is_rejected(tmp_path: Path) -> None:
    text = team_toml(extra='upstream_key_env = "BILLING_STRIPE_KEY"')
    error = config_error(tmp_path, text, environ={"BILLING_STRIPE_KEY": "sk_test_a b"})
    assert error.path == "teams[0]"
    assert "white space" in error.reason
    assert "sk_test_a" not in str(error)


def test_upstream_key_file_is_read_and_stripped(tmp_path: Path) -> None:
    key_file = tmp_path / "stripe_key"
    key_file.write_text(f"{BILLING_UPSTREAM_KEY}\n")
    team = load(tmp_path, team_toml(extra=f'upstream_key_file = "{key_file}"')).teams[0]
    assert team.upstream_key_file == key_file
    assert team.upstream_key is not None
    assert team.upstream_key.get_secret_value() == BILLING_UPSTREAM_KEY


def test_missing_upstream_key_file_is_reported(tmp_path: Path) -> None:
    key_file = tmp_path / "missing_key"
    error = config_error(tmp_path, team_toml(extra=f'upstream_key_file = "{key_file}"'))
    assert error.path == "teams[0].upstream_key_file"
    assert str(key_file) in error.reason
    assert "No such file" in error.reason


def test_empty_upstream_key_file_is_reported(tmp_path: Path) -> None:
    key_file = tmp_path / "empty_key"
    key_file.write_text("\n")
    error = config_error(tmp_path, team_toml(extra=f'upstream_key_file = "{key_file}"'))
    assert error.path == "teams[0].upstream_key_file"
    assert "is empty" in error.reason


def test_upstream_key_env_and_file_together_are_rejected(tmp_path: Path) -> None:
    key_file = tmp_path / "stripe_key"
    key_file.write_text(BILLING_UPSTREAM_KEY)
    extra = f'upstream_key_env = "BILLING_STRIPE_KEY"\nupstream_key_file = "{key_file}"'
    error = config_error(tmp_path, team_toml(extra=extra))
    assert error.path == "teams[0]"
    assert "not both" in error.reason


def test_upstream_key_written_in_the_file_is_rejected(tmp_path: Path) -> None:
    error = config_error(tmp_path, team_toml(extra=f'upstream_key = "{BILLING_UPSTREAM_KEY}"'))
    assert error.path == "teams[0]"
    assert "upstream_key must not be set" in error.reason
    assert BILLING_UPSTREAM_KEY not in str(error)


def test_upstream_key_is_never_shown_in_repr_str_or_json(tmp_path: Path) -> None:
    key_file = tmp_path / "stripe_key"
    key_file.write_text("sk_test_fromfile000000000000001")
    text = team_toml(extra='upstream_key_env = "BILLING_STRIPE_KEY"') + team_toml(
        "files", ANALYTICS_DIGEST, f'upstream_key_file = "{key_file}"'
    )
    config = load(tmp_path, text)
    secrets = [BILLING_UPSTREAM_KEY, "sk_test_fromfile000000000000001"]
    assert [t.upstream_key.get_secret_value() for t in config.teams if t.upstream_key] == secrets
    shown = [
        repr(config),
        str(config),
        config.model_dump_json(),
        str(config.model_dump()),
        *(repr(t) for t in config.teams),
        *(str(t) for t in config.teams),
    ]
    for text_form in shown:
        for secret in secrets:
            assert secret not in text_form
    assert isinstance(config.model_dump()["teams"][0]["upstream_key"], SecretStr)


# --------------------------------------------------------------------------- environment overrides


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("STRIPE_GATEWAY_HOST", "0.0.0.0", "0.0.0.0"),
        ("STRIPE_GATEWAY_PORT", "9123", 9123),
        ("STRIPE_GATEWAY_API_UPSTREAM", "http://127.0.0.1:9001/", "http://127.0.0.1:9001"),
        ("STRIPE_GATEWAY_FILES_UPSTREAM", "http://127.0.0.1:9002", "http://127.0.0.1:9002"),
        ("STRIPE_GATEWAY_CONNECT_UPSTREAM", "http://127.0.0.1:9003", "http://127.0.0.1:9003"),
        ("STRIPE_GATEWAY_METER_EVENTS_UPSTREAM", "http://localhost:9004", "http://localhost:9004"),
    ],
)
def test_environment_variable_overrides_the_file(
    tmp_path: Path, var: str, value: str, expected: Any
) -> None:
    table, key = ENV_OVERRIDES[var]
    text = '[server]\nhost = "127.0.0.2"\nport = 8081\n[upstream]\n' + "".join(
        f'{k} = "https://{k}.example.com"\n' for k in ("api", "files", "connect", "meter_events")
    )
    config = load(tmp_path, text, environ={var: value})
    assert getattr(getattr(config, table), key) == expected
    untouched = load(tmp_path, text, environ={})
    assert getattr(getattr(untouched, table), key) != expected


def test_environment_overrides_apply_without_the_table_in_the_file(tmp_path: Path) -> None:
    environ = {"STRIPE_GATEWAY_PORT": "9124", "STRIPE_GATEWAY_API_UPSTREAM": "http://127.0.0.1:1"}
    config = load(tmp_path, "", environ=environ)
    assert config.server.port == 9124
    assert config.upstream.api == "http://127.0.0.1:1"


def test_bad_environment_override_is_reported_at_the_key_it_sets(tmp_path: Path) -> None:
    error = config_error(tmp_path, "", environ={"STRIPE_GATEWAY_PORT": "eighty"})
    assert error.path == "server.port"
    assert "must be a whole number" in error.reason


def test_environment_override_needs_its_section_to_be_a_table(tmp_path: Path) -> None:
    error = config_error(tmp_path, "server = 1\n", environ={"STRIPE_GATEWAY_PORT": "1"})
    assert error.path == "server"
    assert "table" in error.reason


def test_parse_config_does_not_change_the_caller_data() -> None:
    data: dict[str, Any] = {"server": {"port": 1}}
    config = parse_config(data, environ={"STRIPE_GATEWAY_PORT": "2"})
    assert config.server.port == 2
    assert data == {"server": {"port": 1}}


# --------------------------------------------------------------------------- plugin tables


def test_unknown_plugin_table_names_the_plugin(tmp_path: Path) -> None:
    error = plugin_host_error(tmp_path, "[plugins.ratelimiter]\nrate = 10\n")
    assert error.path == "plugins.ratelimiter"
    assert "'ratelimiter'" in error.reason
    assert "not loaded" in error.reason


def test_table_for_a_disabled_plugin_is_rejected(tmp_path: Path) -> None:
    error = plugin_host_error(
        tmp_path, '[plugins]\ndisable = ["audit"]\n[plugins.audit]\npath = "-"\n'
    )
    assert error.path == "plugins.audit"
    assert "disabled" in error.reason


def test_disabling_an_unknown_plugin_is_rejected(tmp_path: Path) -> None:
    error = plugin_host_error(tmp_path, '[plugins]\ndisable = ["audti"]\n')
    assert error.path == "plugins.disable[0]"
    assert "'audti'" in error.reason


def test_loading_a_module_that_does_not_exist_is_rejected(tmp_path: Path) -> None:
    error = plugin_host_error(tmp_path, '[plugins]\nload = ["no_such_module_for_gateway"]\n')
    assert error.path == "plugins.load[0]"
    assert "cannot import" in error.reason


def test_unknown_key_in_a_plugin_table_is_reported_under_the_plugin(tmp_path: Path) -> None:
    error = plugin_host_error(tmp_path, "[plugins.audit]\nbogus = 1\n")
    assert str(error) == "plugins.audit.bogus: unknown key"


def test_auth_plugin_takes_no_table(tmp_path: Path) -> None:
    error = plugin_host_error(tmp_path, "[plugins.auth]\nteams = 1\n")
    assert error.path == "plugins.auth.teams"
    assert error.reason.startswith("unknown key")


def test_audit_path_in_a_missing_directory_is_rejected(tmp_path: Path) -> None:
    audit = tmp_path / "no" / "such" / "audit.jsonl"
    error = plugin_host_error(tmp_path, f'[plugins.audit]\npath = "{audit}"\n')
    assert error.path == "plugins.audit.path"
    assert "does not exist" in error.reason


# --------------------------------------------------------------------------- the example file


def test_example_config_is_valid_with_its_secret_in_the_environment() -> None:
    config = load_config(EXAMPLE, environ={"STRIPE_SECRET_KEY": "sk_test_example0000000000000001"})
    assert [t.name for t in config.teams] == ["billing", "analytics"]
    billing, analytics = config.teams
    assert billing.upstream_key is not None
    assert billing.upstream_key.get_secret_value() == "sk_test_example0000000000000001"
    assert analytics.upstream_key is None
    # the digests are those of the demo keys the comments name
    assert billing.key_sha256 == [digest("gw_demo_billing_key")]
    assert analytics.key_sha256 == [digest("sk_test_demo_passthrough_key")]
    # the plugin tables in it are accepted too (this is what check-config does)
    host = PluginHost(config)
    assert host.plugin_names() == BUILTINS


def test_example_config_without_its_secret_names_the_missing_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(EXAMPLE, environ={})
    assert info.value.path == "teams[0].upstream_key_env"
    assert "STRIPE_SECRET_KEY" in info.value.reason


def test_admin_is_off_by_default_and_validated() -> None:
    admin = parse_config({}).admin
    assert (admin.host, admin.port, admin.token_sha256, admin.enabled) == (
        "127.0.0.1",
        0,
        None,
        False,
    )
    on = parse_config({"admin": {"port": 9090, "token_sha256": "a" * 64}}).admin
    assert on.enabled and on.token_sha256 == "a" * 64
    with pytest.raises(ConfigError) as raised:
        parse_config({"admin": {"port": 9090, "token_sha256": "adm_the_token_itself"}})
    assert raised.value.path == "admin.token_sha256"
    with pytest.raises(ConfigError) as raised:
        parse_config({"admin": {"port": 70000}})
    assert raised.value.path == "admin.port"
    with pytest.raises(ConfigError) as raised:
        parse_config({"admin": {"token": "x"}})
    assert raised.value.path == "admin.token" and raised.value.reason == "unknown key"


def test_admin_listener_env_overrides() -> None:
    admin = parse_config(
        {}, environ={"STRIPE_GATEWAY_ADMIN_HOST": "0.0.0.0", "STRIPE_GATEWAY_ADMIN_PORT": "9191"}
    ).admin
    assert (admin.host, admin.port) == ("0.0.0.0", 9191)


# --------------------------------------------------------------------------- strictness


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[server]\nport = "8080"\n', "server.port: must be a whole number between 0 and 65535"),
        ('[server]\nworkers = "2"\n', "server.workers: must be a whole number between 1 and 256"),
        ('[server]\ndrain_timeout = "30"\n', "server.drain_timeout: must be a number > 0"),
        ("[server]\nport = 8080.0\n", "server.port: must be a whole number"),
        ('[server]\nuvloop = "true"\n', "server.uvloop: must be true or false"),
        ('[upstream]\nmax_connections = "100"\n', "upstream.max_connections: must be a whole"),
        ("[upstream]\nread_timeout = nan\n", "upstream.read_timeout: must be a finite number"),
        ("[upstream]\nread_timeout = inf\n", "upstream.read_timeout: must be a finite number"),
        (team_toml(extra='max_in_flight = "4"'), "teams[0].max_in_flight: must be a whole"),
        ("[server]\nport = 70000\n", "server.port: must be a whole number between 0 and 65535"),
    ],
)
def test_values_are_not_converted_from_another_type(
    tmp_path: Path, text: str, message: str
) -> None:
    error = config_error(tmp_path, text)
    assert str(error).startswith(message)
    assert "Input should" not in str(error)


def test_a_whole_number_is_a_number(tmp_path: Path) -> None:
    config = load(tmp_path, "[server]\ndrain_timeout = 30\nbody_timeout = 1.5\n")
    assert config.server.drain_timeout == 30.0 and isinstance(config.server.drain_timeout, float)
    assert config.server.body_timeout == 1.5


def test_a_misspelt_key_is_an_unknown_key_not_a_missing_one(tmp_path: Path) -> None:
    text = f'[[teams]]\nnmae = "billing"\nkey_sha256 = ["{BILLING_DIGEST}"]\n'
    assert str(config_error(tmp_path, text)) == "teams[0].nmae: unknown key"
    text = '[[teams]]\nname = "billing"\nkey_sha265 = ["x"]\n'
    assert str(config_error(tmp_path, text)) == "teams[0].key_sha265: unknown key"


def test_the_upstream_key_file_is_a_path_written_as_a_string(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk_test_fromfile0000000000001\n")
    config = load(tmp_path, team_toml(extra=f'upstream_key_file = "{key_file}"'))
    (team,) = config.teams
    assert team.upstream_key_file == key_file
    assert team.upstream_key is not None
