"""The segment DSL's consent node reads the consent ledger, whatever set the choice.

Through the HTTP API on a manual clock: consent set by ``PUT /v1/profiles/{id}/consent``,
by a TC string, by identify traits, changed later; the real-time members, the SQL
preview and the ledger agree. Then the whole log replayed into empty stores rebuilds
the ledger, choices made through the API included.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from remarket.clock import ManualClock
from remarket.config import Settings
from remarket.privacy import ConsentLedger
from remarket.storage.state import connect_state
from tests.privacy.replay import replay_log
from tests.privacy.test_consent import ALL_TCF, NONE_TCF
from tests.segments.world import World, running

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
ADVERTISABLE = {
    "name": "advertisable",
    "entry": "root",
    "nodes": [{"id": "root", "type": "consent", "purpose": "advertising"}],
}


def _put_consent(world: World, profile_id: str, granted: bool) -> None:
    response = world.server.client.put(
        f"/v1/profiles/{profile_id}/consent",
        json={"purposes": {"advertising": granted}},
        headers=world.server.admin,
    )
    assert response.status_code == 200, response.json()


def _preview(world: World) -> set[str]:
    response = world.server.client.post(
        "/v1/segments/preview", json=ADVERTISABLE, headers=world.server.admin
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["size"] == len(body["sample"])  # few enough to see them all
    return set(body["sample"])


def _allowed(world: World, ids: dict[str, str]) -> set[str]:
    ledger = ConsentLedger(world.runtime.engine)
    return {name for name, pid in ids.items() if ledger.allowed(pid, "advertising")}


def test_the_consent_node_follows_the_ledger(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    with running(tmp_path, clock) as world:
        world.save(ADVERTISABLE)
        world.send(
            *(
                {"type": "identify", "userId": f"u-{name}", "anonymousId": f"a-{name}"}
                for name in ("api", "tcf", "trait", "none")
            )
        )
        world.settle()
        ids = {name: world.profile(user_id=f"u-{name}") for name in ("api", "tcf", "trait", "none")}

        clock.advance(timedelta(minutes=1))
        _put_consent(world, ids["api"], True)
        world.send(
            {
                "type": "track",
                "event": "Page Viewed",
                "anonymousId": "a-tcf",
                "context": {"consent": {"tcString": ALL_TCF}},
            },
            {
                "type": "identify",
                "userId": "u-trait",
                "traits": {"consent": {"advertising": True}},
            },
        )
        world.settle()
        clock.advance(timedelta(minutes=1))
        # The trait profile then refuses through its CMP: the ledger's newest choice wins.
        world.send(
            {
                "type": "track",
                "event": "Page Viewed",
                "userId": "u-trait",
                "context": {"consent": {"tcString": NONE_TCF}},
            }
        )
        world.settle()
        clock.advance(timedelta(seconds=1))

        expected = {ids["api"], ids["tcf"]}
        assert _allowed(world, ids) == {"api", "tcf"}
        assert world.members("advertisable") == expected
        assert _preview(world) == expected

        _put_consent(world, ids["api"], False)
        world.settle()
        clock.advance(timedelta(seconds=1))
        assert _allowed(world, ids) == {"tcf"}
        assert world.members("advertisable") == {ids["tcf"]}
        assert _preview(world) == {ids["tcf"]}
        transitions = [
            (e, who) for e, segment, who in world.published() if segment == ADVERTISABLE["name"]
        ]
        assert transitions.count(("Segment Exited", "u-api")) == 1
        # The profile shows the ledger's state as traits too.
        profile = world.server.client.get(
            f"/v1/profiles/{ids['api']}", headers=world.server.admin
        ).json()
        assert profile["traits"]["consent"] == {"advertising": False}
        live = {pid: ConsentLedger(world.runtime.engine).history(pid) for pid in ids.values()}

    # The whole log into empty stores (the keys carried over: nobody was erased).
    settings = Settings(data_dir=tmp_path)
    live_state = connect_state(settings.resolved_database_url())
    engine, warehouse = replay_log(settings, live_state, tmp_path / "replay")
    live_state.dispose()
    ledger = ConsentLedger(engine)
    for pid, history in live.items():
        # Every choice comes back, with its source, basis, time and ref, once.
        assert sorted(ledger.history(pid), key=repr) == sorted(history, key=repr), pid
    warehouse.close()
