"""Per-store erasers: rows found by profile id or by the identifier values a person sent."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, select

from remarket.privacy.erasers import PERSONAL_TABLES, TableEraser
from remarket.storage.state.tables import guard_anomalies, metadata

AT = datetime(2026, 11, 1, tzinfo=UTC)


def _anomaly(subject: str) -> dict[str, object]:
    return {
        "kind": "profile",
        "subject": subject,
        "source_id": "s1",
        "window_start": AT,
        "baseline": 3,
        "threshold": 300,
        "detected_at": AT,
    }


def test_guard_reports_are_erased_by_the_ids_the_person_sent(state_engine: Engine) -> None:
    with state_engine.begin() as conn:
        conn.execute(
            guard_anomalies.insert(),
            [_anomaly("u-gone"), _anomaly("a-gone"), _anomaly("u-kept"), _anomaly("p_gone")],
        )
    eraser = TableEraser(state_engine, guard_anomalies, "subject", of="ids")
    person = [("user_id", "u-gone"), ("anonymous_id", "a-gone")]
    assert eraser.residue(["p_gone"], person) == 2
    assert eraser.erase(["p_gone"], person) == 2
    assert eraser.residue(["p_gone"], person) == 0
    with state_engine.connect() as conn:
        left = sorted(conn.scalars(select(guard_anomalies.c.subject)))
    # Another person's report stays; the profile id is not an id a client sends.
    assert left == ["p_gone", "u-kept"]


def test_every_state_table_naming_a_profile_is_erased() -> None:
    # A table added later with a profile_id column and no eraser fails here.
    naming = {t.name for t in metadata.sorted_tables if "profile_id" in t.c}
    assert naming - {t.name for t in PERSONAL_TABLES} == set()
