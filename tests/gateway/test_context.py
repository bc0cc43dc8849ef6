"""Per-request state: the gateway's request ids."""

from __future__ import annotations

import os

from gateway.context import new_request_id
from gateway.testing import request_context


def test_request_ids_are_unique_and_keep_their_form() -> None:
    ids = [new_request_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    for request_id in ids[:50]:
        assert request_id.startswith("gwreq_") and len(request_id) == 30
        assert request_id[6:].isalnum() and request_id.isascii()


def test_a_forked_child_does_not_reuse_its_parents_ids() -> None:
    new_request_id()  # the parent has ids made in advance
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one id and leave at once
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child_id = os.read(read, 64).decode()
    os.close(read)
    assert child_id.startswith("gwreq_")
    parents = {new_request_id() for _ in range(1024)}
    assert child_id not in parents


def test_the_credential_is_the_upstream_key_else_the_clients_header_as_sent() -> None:
    assert request_context().credential is None and request_context().livemode is None
    basic = request_context(headers={"Authorization": "Basic c2tfbGl2ZV94Og=="})
    assert basic.credential == "Basic c2tfbGl2ZV94Og==" and basic.livemode is None
    bearer = request_context(headers={"Authorization": "bearer sk_live_0000000001"})
    assert bearer.credential == "bearer sk_live_0000000001" and bearer.livemode is True
    bearer.upstream_key = "sk_test_0000000001"  # what the auth plugin sends upstream
    assert bearer.credential == "sk_test_0000000001" and bearer.livemode is False
