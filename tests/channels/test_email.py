"""E-mail end to end: the deliverer renders a template and a real SMTP server receives it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import Engine, update

from remarket.channels.counts import delivery_counts
from remarket.channels.email import message_id_for
from remarket.channels.outbox import RESENT
from remarket.storage.state import channel_outbox
from tests.channels.sinks import MailSink, self_signed, smtp_server
from tests.channels.world import World


@pytest.fixture
def world(state_engine: Engine, tmp_path: Path) -> World:
    return World.make(state_engine, tmp_path)


@pytest.fixture
def smtp(world: World) -> Iterator[MailSink]:
    with smtp_server() as (sink, port):
        world.provider(
            "smtp", host="127.0.0.1", port=port, sender="shop@shop.example", security="none"
        )
        yield sink


def test_email_arrives_with_html_text_and_one_click_unsubscribe(
    world: World, smtp: MailSink
) -> None:
    world.profile("p_1", email="ann@example.com", name="Ann")
    world.template(
        "welcome",
        "email",
        "Hello {{ profile.name }}, you looked at {{ event.properties.product }}",
        subject="Hi {{ profile.name }}",
        html="<p>Hello {{ profile.name }}</p>",
    )
    world.enqueue("k1", "p_1", trigger={"properties": {"product": "Boots"}})

    assert world.deliver() == 1

    [message] = smtp.messages()
    assert message["To"] == "ann@example.com"
    assert message["Subject"] == "Hi Ann"
    assert message["Message-ID"] == message_id_for("k1", "shop.example")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Unsubscribe"].strip().startswith("<http://127.0.0.1:8000/v1/unsubscribe/")
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and "Hello Ann, you looked at Boots" in text.get_content()
    assert html is not None and "<p>Hello Ann</p>" in html.get_content()
    assert world.row("k1").status == "sent"


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_with_login(world: World, tmp_path: Path, security: str) -> None:
    cert, key = self_signed(tmp_path)
    with smtp_server(tls=(cert, key), implicit=security == "tls") as (sink, port):
        world.provider(
            "smtp",
            host="127.0.0.1",
            port=port,
            sender="shop@shop.example",
            security=security,
            ca_file=str(cert),
            username="u",
            password="p",
        )
        world.profile("p_1", email="ann@example.com")
        world.template("welcome", "email", "Hi", subject="Hi")
        world.enqueue("k1", "p_1")
        world.deliver()
    assert world.row("k1").status == "sent", world.row("k1").last_error
    assert len(sink.messages()) == 1


def test_a_second_enqueue_of_the_same_key_sends_nothing_more(world: World, smtp: MailSink) -> None:
    world.profile("p_1", email="ann@example.com")
    world.template("welcome", "email", "Hi", subject="Hi")
    assert world.enqueue("k1", "p_1") is True
    world.deliver()
    assert world.enqueue("k1", "p_1") is False
    world.deliver()
    assert len(smtp.messages()) == 1


def test_a_send_is_marked_before_the_server_has_it_and_a_send_in_doubt_is_marked_resent(
    world: World, smtp: MailSink
) -> None:
    world.profile("p_1", email="ann@example.com")
    world.profile("p_2", email="bob@example.com")
    world.template("welcome", "email", "Hi", subject="Hi")
    world.enqueue("k1", "p_1")
    world.enqueue("k2", "p_2")
    # k2 as a deliverer killed during its send leaves it: marked, never recorded.
    _mark_in_doubt(world, "k2")
    seen: dict[str, bool] = {}
    accept = smtp.handle_DATA

    async def handle_data(server: SMTP, session: Session, envelope: Envelope) -> str:
        # What the store says while the server holds the message and has not answered.
        to = envelope.rcpt_tos[0]
        seen[to] = world.row("k1" if to.startswith("ann") else "k2").in_doubt
        return await accept(server, session, envelope)

    smtp.handle_DATA = handle_data  # type: ignore[method-assign]
    assert world.deliver() == 2
    assert seen == {"ann@example.com": True, "bob@example.com": True}
    k1, k2 = world.row("k1"), world.row("k2")
    assert (k1.status, k1.reason, k1.in_doubt) == ("sent", None, False)
    assert (k2.status, k2.reason, k2.in_doubt) == ("sent", RESENT, True)


def test_a_send_in_doubt_paused_then_deferred_says_so_and_is_resent_once(
    state_engine: Engine, tmp_path: Path
) -> None:
    world = World.make(state_engine, tmp_path, channels_quiet_hours=(21, 8))
    with smtp_server() as (sink, port):
        world.provider(
            "smtp", host="127.0.0.1", port=port, sender="shop@shop.example", security="none"
        )
        world.profile("p_1", email="ann@example.com", timezone="Asia/Tokyo")  # 21:00 there
        world.template("welcome", "email", "Hi", subject="Hi")
        world.enqueue("k1", "p_1", journey_id="j", node_id="mail")
        _mark_in_doubt(world, "k1")

        world.paused.add("j")
        world.deliver()
        row = world.row("k1")
        assert (row.status, row.reason, row.in_doubt) == ("pending", "paused", True)

        world.paused.clear()
        world.clock.advance(timedelta(seconds=1))
        world.deliver()
        row = world.row("k1")
        assert (row.status, row.reason, row.in_doubt) == ("pending", "quiet_hours", True)
        assert sink.ids == []

        world.clock.advance(timedelta(hours=11))  # 08:00 in Tokyo: quiet hours are over
        world.deliver()
        row = world.row("k1")
        assert (row.status, row.reason, row.in_doubt) == ("sent", RESENT, True)
        assert sink.ids == [message_id_for("k1", "shop.example")]
    counts = delivery_counts(world.engine, "j")["mail"]
    assert (counts.sent, counts.resent, counts.pending) == (1, 1, 0)


def _mark_in_doubt(world: World, key: str) -> None:
    """The row as a deliverer killed while sending it leaves it."""
    with world.engine.begin() as conn:
        conn.execute(
            update(channel_outbox)
            .where(channel_outbox.c.idempotency_key == key)
            .values(in_doubt=True)
        )
