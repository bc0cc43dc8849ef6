"""The console's session cookie (gateway.console.session): a value made for one token digest,
key and moment is refused for any other, after it expires, and whatever is changed in it;
it holds nothing of the token; the workers of ``serve --workers N`` share one key."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.console.session import KEY_BYTES, Sessions, shared_key

TOKEN = "adm_test_session_000000000000001"
DIGEST = hashlib.sha256(TOKEN.encode()).hexdigest()
OTHER_DIGEST = hashlib.sha256(b"adm_test_session_000000000000002").hexdigest()
KEY = bytes(range(KEY_BYTES))
HOURS_12 = 12 * 3600.0
NOW = 1_800_000_000.0
SESSIONS = Sessions(KEY, HOURS_12)


def test_a_value_is_good_for_its_token_until_it_expires() -> None:
    value, expires = SESSIONS.issue(DIGEST, NOW)
    assert expires == NOW + HOURS_12
    assert SESSIONS.valid(value, DIGEST, NOW)
    assert SESSIONS.valid(value, DIGEST, expires - 1)
    assert not SESSIONS.valid(value, DIGEST, expires)  # expired
    assert not SESSIONS.valid(value, DIGEST, expires + 3600)
    assert not SESSIONS.valid(value, OTHER_DIGEST, NOW)  # the token changed
    assert not SESSIONS.valid(value, None, NOW)  # no token configured any more
    assert not Sessions(bytes(KEY_BYTES), HOURS_12).valid(value, DIGEST, NOW)  # another key


def test_a_shorter_lifetime_applies_to_values_already_out() -> None:
    value, _ = SESSIONS.issue(DIGEST, NOW)
    assert not Sessions(KEY, 3600).valid(value, DIGEST, NOW)
    assert Sessions(KEY, 3600).valid(value, DIGEST, NOW + HOURS_12 - 1800)


def test_two_sign_ins_get_two_values_with_nothing_of_the_token() -> None:
    one, _ = SESSIONS.issue(DIGEST, NOW)
    two, _ = SESSIONS.issue(DIGEST, NOW)
    assert one != two
    for value in (one, two):
        assert TOKEN not in value and DIGEST not in value and DIGEST[:16] not in value
        assert KEY.hex() not in value
        assert value.isascii() and ";" not in value and " " not in value


def test_a_value_for_the_far_future_is_refused_even_with_a_good_mac() -> None:
    # made under the same key with a lifetime longer than the one in force
    value, _ = Sessions(KEY, 10 * HOURS_12).issue(DIGEST, NOW)
    assert not SESSIONS.valid(value, DIGEST, NOW)


@given(st.data())
def test_any_change_to_a_value_is_refused(data: st.DataObject) -> None:
    value, _ = SESSIONS.issue(DIGEST, NOW)
    position = data.draw(st.integers(0, len(value) - 1), label="position")
    kind = data.draw(st.sampled_from(["replace", "delete", "insert", "truncate"]), label="kind")
    char = data.draw(st.characters(min_codepoint=32, max_codepoint=0x2FF), label="char")
    if kind == "replace":
        changed = value[:position] + char + value[position + 1 :]
    elif kind == "delete":
        changed = value[:position] + value[position + 1 :]
    elif kind == "insert":
        changed = value[:position] + char + value[position:]
    else:
        changed = value[:position]
    if changed != value:
        assert not SESSIONS.valid(changed, DIGEST, NOW)


@given(st.text(max_size=120))
def test_no_made_up_value_is_valid(value: str) -> None:
    assert not SESSIONS.valid(value, DIGEST, NOW)


def test_without_a_run_directory_each_process_has_its_own_key() -> None:
    one, two = shared_key(None), shared_key(None)
    assert len(one) == len(two) == KEY_BYTES and one != two


def test_the_workers_share_one_key_in_the_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    keys: list[bytes] = []
    start = threading.Barrier(8)

    def worker() -> None:  # as many workers starting at once
        start.wait()
        keys.append(shared_key(str(run_dir)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(keys) == 8 and len(set(keys)) == 1 and len(keys[0]) == KEY_BYTES
    (key_file,) = run_dir.iterdir()  # no leftover of the losers
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert shared_key(str(run_dir)) == keys[0]  # a restarted worker gets it too


def test_a_damaged_key_file_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "console-session.key").write_bytes(b"short")
    with pytest.raises(ValueError, match="not a console session key"):
        shared_key(str(tmp_path))
