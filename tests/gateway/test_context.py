"""Per-request state: the gateway's request ids."""

from __future__ import annotations

import os

from gateway.context import new_request_id


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
