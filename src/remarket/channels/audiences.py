"""Ad audiences that follow a segment: identifiers normalised and SHA-256 hashed as Meta
(Custom Audiences) and Google (Customer Match) document, uploads as outbox messages."""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Final

from sqlalchemy import Connection, Engine, delete, func, select, update

from remarket.channels.http import HttpProvider
from remarket.channels.outbox import OutboxMessage, enqueue_many
from remarket.channels.providers import Envelope
from remarket.errors import ConflictError, InvalidInput, NotFound
from remarket.segments.membership import chunks
from remarket.storage.state import (
    channel_audiences,
    channel_outbox,
    consents,
    segment_history,
    segment_members,
    segments,
)

__all__ = [
    "DEFAULT_COUNTRY_CODE",
    "PLATFORMS",
    "Audience",
    "AudienceProvider",
    "AudienceStore",
    "GoogleCustomerMatchProvider",
    "MetaAudienceProvider",
    "e164",
    "generation",
    "google_identifiers",
    "hashed_identifiers",
    "meta_row",
    "sha256_hex",
]

PLATFORMS: Final = ("meta", "google")
DEFAULT_COUNTRY_CODE: Final = "1"
"""The country code of phone numbers written without one, unless the provider sets it."""
_GMAIL: Final = ("gmail.com", "googlemail.com")
_SYNC_BATCH: Final = 5_000


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def e164(raw: str, country_code: str) -> str | None:
    """``+<country code><number>``: symbols dropped; a number without ``+`` or ``00``
    gets ``country_code`` after its trunk zeros go. None if too short or long.

    >>> e164("(650)555-1212", "1"), e164("+44 20 7946 0018", "1"), e164("0049 30 1234567", "1")
    ('+16505551212', '+442079460018', '+49301234567')
    """
    text = raw.strip()
    digits = re.sub(r"\D", "", text)
    if text.startswith("+"):
        number = digits
    elif digits.startswith("00"):
        number = digits[2:]
    else:
        number = country_code + digits.lstrip("0")
    number = number.lstrip("0")
    return f"+{number}" if 8 <= len(number) <= 15 else None


def _email(raw: str) -> str:
    return raw.strip().lower()


def meta_row(
    email: str | None, phone: str | None, country_code: str
) -> tuple[list[str], list[str]]:
    """Meta's ``schema`` and one ``data`` row: e-mail trimmed and lower-cased, phone as
    digits with country code and no leading zeros, each SHA-256 hex.

    >>> schema, row = meta_row("John_Smith@gmail.com", "(650)555-1212", "1")
    >>> schema, row[0][:12], row[1][:12]
    (['EMAIL', 'PHONE'], '62a14e44f765', 'e323ec626319')
    """
    schema: list[str] = []
    row: list[str] = []
    if email and _email(email):
        schema.append("EMAIL")
        row.append(sha256_hex(_email(email)))
    number = e164(phone, country_code) if phone else None
    if number:
        schema.append("PHONE")
        row.append(sha256_hex(number[1:]))
    return schema, row


def google_identifiers(
    email: str | None, phone: str | None, country_code: str
) -> list[dict[str, str]]:
    """Customer Match ``userIdentifiers``: e-mail trimmed and lower-cased, the dots
    before ``@gmail.com`` / ``@googlemail.com`` removed; phone in E.164 (with ``+``).

    >>> [sorted(i) for i in google_identifiers("J.Doe@Gmail.com ", "+1 650 555 1212", "1")]
    [['hashedEmail'], ['hashedPhoneNumber']]
    """
    found: list[dict[str, str]] = []
    if email and _email(email):
        local, _, domain = _email(email).rpartition("@")
        if domain in _GMAIL:
            local = local.replace(".", "")
        found.append({"hashedEmail": sha256_hex(f"{local}@{domain}")})
    number = e164(phone, country_code) if phone else None
    if number:
        found.append({"hashedPhoneNumber": sha256_hex(number)})
    return found


def hashed_identifiers(
    platform: str, email: str | None, phone: str | None, country_code: str
) -> dict[str, Any]:
    """What an upload to ``platform`` holds of a person: Meta's ``schema`` and ``row``,
    or Google's ``userIdentifiers`` (empty if the person has neither identifier).

    >>> hashed_identifiers("meta", "a@example.com", None, "1")["schema"]
    ['EMAIL']
    >>> hashed_identifiers("google", None, None, "1")
    {'userIdentifiers': []}
    """
    if platform == "meta":
        schema, row = meta_row(email, phone, country_code)
        return {"schema": schema, "row": row}
    return {"userIdentifiers": google_identifiers(email, phone, country_code)}


class AudienceProvider(HttpProvider, ABC):
    """An ad platform: uploads many identifiers of one audience and operation at once
    (every envelope given to :meth:`send_many` has the same audience and op).

    An envelope's ``data`` holds the person's ``email`` and ``phone``, hashed here, or
    (a removal queued by erasure, when they are gone) ``hashed``: what
    :func:`hashed_identifiers` made of them then."""

    channel = "audience"
    platform: ClassVar[str]

    def __init__(self, *, country_code: str, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self._country_code = country_code

    def _hashed(self, data: dict[str, Any]) -> dict[str, Any]:
        given = data.get("hashed")
        if isinstance(given, dict):
            return given
        return hashed_identifiers(
            self.platform, data.get("email"), data.get("phone"), self._country_code
        )

    async def send(self, envelope: Envelope) -> None:
        await self.send_many([envelope])

    @abstractmethod
    async def send_many(self, envelopes: Sequence[Envelope]) -> None: ...


class MetaAudienceProvider(AudienceProvider):
    """``POST`` (add) / ``DELETE`` (remove) ``{base_url}/{version}/{audience_id}/users``
    with ``{"session": ..., "payload": {"schema": [...], "data": [[...]]}}`` and the
    access token as Bearer (Meta Marketing API, Customer File Custom Audiences)."""

    platform = "meta"

    def __init__(
        self,
        *,
        access_token: str,
        country_code: str = DEFAULT_COUNTRY_CODE,
        base_url: str = "https://graph.facebook.com",
        version: str = "v21.0",
        timeout: float = 30.0,
    ) -> None:
        super().__init__(country_code=country_code, timeout=timeout)
        self._base = f"{base_url.rstrip('/')}/{version}"
        self._headers = {"Authorization": f"Bearer {access_token}"}

    async def send_many(self, envelopes: Sequence[Envelope]) -> None:
        """One request per identifier schema (Meta takes up to 10,000 rows in one)."""
        first = envelopes[0].data
        by_schema: dict[tuple[str, ...], list[list[str]]] = {}
        for envelope in envelopes:
            hashed = self._hashed(envelope.data)
            by_schema.setdefault(tuple(hashed["schema"]), []).append(list(hashed["row"]))
        # The session id derives from the idempotency keys: a repeat names the same upload.
        keys = "\x1f".join(e.key for e in envelopes)
        session = int(hashlib.sha256(keys.encode()).hexdigest()[:12], 16)
        method = "POST" if first["op"] == "add" else "DELETE"
        url = f"{self._base}/{first['audience']}/users"
        for seq, (fields, rows) in enumerate(sorted(by_schema.items()), start=1):
            body = {
                "session": {
                    "session_id": session,
                    "batch_seq": seq,
                    "last_batch_flag": seq == len(by_schema),
                    "estimated_num_total": len(envelopes),
                },
                "payload": {"schema": list(fields), "data": rows},
            }
            await self._request(method, url, json=body, headers=self._headers)


class GoogleCustomerMatchProvider(AudienceProvider):
    """Google Ads API ``OfflineUserDataJobService``: ``offlineUserDataJobs:create`` for the
    user list, ``:addOperations`` with ``create`` / ``remove`` of ``userIdentifiers``,
    then ``:run``; headers ``Authorization: Bearer``, ``developer-token`` and
    ``login-customer-id``."""

    platform = "google"

    def __init__(
        self,
        *,
        customer_id: str,
        developer_token: str,
        access_token: str,
        login_customer_id: str | None = None,
        country_code: str = DEFAULT_COUNTRY_CODE,
        base_url: str = "https://googleads.googleapis.com",
        version: str = "v17",
        timeout: float = 30.0,
    ) -> None:
        super().__init__(country_code=country_code, timeout=timeout)
        self._base = f"{base_url.rstrip('/')}/{version}"
        self._customer = customer_id.replace("-", "")
        self._headers = {
            "Authorization": f"Bearer {access_token}",
            "developer-token": developer_token,
        }
        if login_customer_id:
            self._headers["login-customer-id"] = login_customer_id.replace("-", "")

    async def send_many(self, envelopes: Sequence[Envelope]) -> None:
        """One job: create it, add every operation, run it."""
        first = envelopes[0].data
        user_list = f"customers/{self._customer}/userLists/{first['audience']}"
        created = await self._post(
            f"{self._base}/customers/{self._customer}/offlineUserDataJobs:create",
            json={
                "job": {
                    "type": "CUSTOMER_MATCH_USER_LIST",
                    "customerMatchUserListMetadata": {"userList": user_list},
                }
            },
            headers=self._headers,
        )
        job = created.json()["resourceName"]
        op = "create" if first["op"] == "add" else "remove"
        operations = [
            {op: {"userIdentifiers": self._hashed(e.data)["userIdentifiers"]}} for e in envelopes
        ]
        await self._post(
            f"{self._base}/{job}:addOperations",
            json={"enablePartialFailure": True, "operations": operations},
            headers=self._headers,
        )
        await self._post(f"{self._base}/{job}:run", json={}, headers=self._headers)


@dataclass(frozen=True, slots=True)
class Audience:
    id: str
    segment: str
    platform: str
    external_id: str
    history_cursor: int
    created_at: datetime


def _audience(row: Any) -> Audience:
    return Audience(
        row.id, row.segment, row.platform, row.external_id, row.history_cursor, row.created_at
    )


def generation(audience_id: str, created_at: datetime) -> str:
    """The prefix of an audience's upload keys."""
    # A re-created audience of the same id uploads again: its keys differ from the old.
    return f"aud:{audience_id}:{int(created_at.timestamp() * 1_000_000)}"


class AudienceStore:
    """Audiences bound to a segment; :meth:`sync` turns membership changes into uploads.

    Creating one enqueues an ``add`` for every current member; each later ``entered`` /
    ``exited`` row of ``segment_history`` becomes an ``add`` / ``remove``, keyed by the
    history row, so a sync that runs twice enqueues nothing twice.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create(
        self, audience_id: str, *, segment: str, platform: str, external_id: str, now: datetime
    ) -> Audience:
        if platform not in PLATFORMS:
            raise InvalidInput(f"platform must be one of {list(PLATFORMS)}", field="platform")
        with self._engine.begin() as conn:
            known = conn.scalar(
                select(segments.c.name).where(
                    segments.c.name == segment, segments.c.deleted_at.is_(None)
                )
            )
            if known is None:
                raise NotFound(f"no segment {segment!r}", field="segment")
            if conn.scalar(
                select(channel_audiences.c.id).where(channel_audiences.c.id == audience_id)
            ):
                raise ConflictError(f"audience {audience_id!r} exists", field="id")
            cursor = conn.scalar(select(func.coalesce(func.max(segment_history.c.id), 0))) or 0
            conn.execute(
                channel_audiences.insert(),
                {
                    "id": audience_id,
                    "segment": segment,
                    "platform": platform,
                    "external_id": external_id,
                    "history_cursor": cursor,
                    "created_at": now,
                },
            )
            prefix = generation(audience_id, now)
            members = conn.scalars(
                select(segment_members.c.profile_id).where(segment_members.c.segment == segment)
            ).all()
            enqueue_many(
                conn,
                [
                    OutboxMessage(
                        f"{prefix}:m:{pid}",
                        pid,
                        "audience",
                        None,
                        {"audience": audience_id, "op": "add"},
                    )
                    for pid in members
                ],
                now=now,
            )
        return self.get(audience_id)

    def get(self, audience_id: str) -> Audience:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(channel_audiences).where(channel_audiences.c.id == audience_id)
            ).one_or_none()
        if row is None:
            raise NotFound(f"no audience {audience_id!r}", field="audience_id")
        return _audience(row)

    def all(self) -> list[Audience]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(channel_audiences).order_by(channel_audiences.c.id))
            return [_audience(row) for row in rows]

    def delete(self, audience_id: str) -> None:
        with self._engine.begin() as conn:
            gone = conn.execute(
                delete(channel_audiences).where(channel_audiences.c.id == audience_id)
            ).rowcount
        if not gone:
            raise NotFound(f"no audience {audience_id!r}", field="audience_id")

    def sync(self, *, now: datetime) -> int:
        """Enqueue the uploads for membership changes since the last sync; how many."""
        total = 0
        for audience in self.all():
            with self._engine.begin() as conn:
                total += self._sync_one(conn, audience, now)
                total += self._consent_changes(conn, audience, now)
        return total

    @staticmethod
    def _consent_changes(conn: Connection, audience: Audience, now: datetime) -> int:
        """A member who withdraws advertising consent is removed from the audience (and
        added again on a new grant): one upload per consent record, keyed by it."""
        c = consents.c
        rows = conn.execute(
            select(c.profile_id, c.state, c.ref)
            .join(
                segment_members,
                (segment_members.c.profile_id == c.profile_id)
                & (segment_members.c.segment == audience.segment),
            )
            .where(c.purpose == "advertising", c.at > audience.created_at)
        ).all()
        if not rows:
            return 0
        prefix = generation(audience.id, audience.created_at)
        wanted = {
            f"{prefix}:c:{hashlib.sha256(r.ref.encode()).hexdigest()[:16]}:{r.profile_id}": r
            for r in rows
        }
        known: set[str] = set()
        for chunk in chunks(sorted(wanted)):
            known.update(
                conn.scalars(
                    select(channel_outbox.c.idempotency_key).where(
                        channel_outbox.c.idempotency_key.in_(chunk)
                    )
                )
            )
        return enqueue_many(
            conn,
            [
                OutboxMessage(
                    key,
                    row.profile_id,
                    "audience",
                    None,
                    {
                        "audience": audience.id,
                        "op": "add" if row.state == "granted" else "remove",
                        "cause": "consent",
                    },
                )
                for key, row in wanted.items()
                if key not in known
            ],
            now=now,
        )

    @staticmethod
    def _sync_one(conn: Connection, audience: Audience, now: datetime) -> int:
        rows = conn.execute(
            select(segment_history.c.id, segment_history.c.profile_id, segment_history.c.kind)
            .where(
                segment_history.c.segment == audience.segment,
                segment_history.c.id > audience.history_cursor,
            )
            .order_by(segment_history.c.id)
            .limit(_SYNC_BATCH)
        ).all()
        if not rows:
            return 0
        prefix = generation(audience.id, audience.created_at)
        added = enqueue_many(
            conn,
            [
                OutboxMessage(
                    f"{prefix}:h:{row.id}",
                    row.profile_id,
                    "audience",
                    None,
                    {"audience": audience.id, "op": "add" if row.kind == "entered" else "remove"},
                )
                for row in rows
            ],
            now=now,
        )
        # Only forward: two syncs at once both enqueue (no-ops on the keys) and agree.
        conn.execute(
            update(channel_audiences)
            .where(
                channel_audiences.c.id == audience.id,
                channel_audiences.c.history_cursor < rows[-1].id,
            )
            .values(history_cursor=rows[-1].id)
        )
        return added
