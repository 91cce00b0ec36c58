"""`streams.delivery_count` reads a JetStream message's delivery count from its ack subject, as nats-py's
metadata parse does, in both subject formats."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg
from nats.errors import NotJSMessageError

from coordinator.nats.streams import delivery_count

V1 = "$JS.ACK.JOB_OUTPUT.coordinator-output.{n}.1234.987.1733330000123456789.42"
V2 = "$JS.ACK._.ACCHASH.JOB_STATUS.coordinator-status.{n}.1234.987.1733330000123456789.42.rnd"


@pytest.mark.parametrize("template", [V1, V2])
@pytest.mark.parametrize("delivered", [1, 2, 17])
def test_the_count_is_the_ack_subjects_as_nats_py_parses_it(template: str, delivered: int) -> None:
    msg = Msg(None, subject="host.h.output", reply=template.format(n=delivered), data=b"{}")  # type: ignore[arg-type]
    assert delivery_count(msg) == delivered == msg.metadata.num_delivered


def test_a_reply_that_is_no_ack_subject_is_nats_pys_error() -> None:
    msg = Msg(None, subject="host.h.output", reply="_INBOX.abc", data=b"{}")  # type: ignore[arg-type]
    with pytest.raises(NotJSMessageError):
        delivery_count(msg)
