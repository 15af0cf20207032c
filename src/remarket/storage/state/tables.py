"""Operational tables of the state store (SQLite or PostgreSQL), as SQLAlchemy Core.

Changes to these tables go through an Alembic migration in ``migrations/versions``.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)

__all__ = [
    "api_keys",
    "audit_head",
    "audit_log",
    "channel_audiences",
    "channel_outbox",
    "channel_providers",
    "channel_suppressions",
    "channel_templates",
    "consent_history",
    "consents",
    "consumer_offsets",
    "erasures",
    "guard_anomalies",
    "guard_blocks",
    "guard_counters",
    "identities",
    "journey_assignments",
    "journey_instances",
    "journey_steps",
    "journey_versions",
    "journeys",
    "login_failures",
    "metadata",
    "pii_key_handles",
    "pii_keys",
    "privacy_secrets",
    "profile_traits",
    "profiles",
    "quarantine",
    "retention_rules",
    "segment_errors",
    "segment_history",
    "segment_members",
    "segment_outbox",
    "segment_states",
    "segment_timers",
    "segment_versions",
    "segments",
    "sources",
    "user_sessions",
    "users",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

_TS = DateTime(timezone=True)

sources = Table(
    "sources",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    # Only a SHA-256 of the write key is kept; the key itself is shown once at creation.
    Column("write_key_hash", String(64), nullable=False, unique=True),
    Column("write_key_prefix", String(16), nullable=False),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_at", _TS, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("role", String(32), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("key_prefix", String(16), nullable=False),
    Column("created_at", _TS, nullable=False),
    Column("revoked_at", _TS, nullable=True),
)

profiles = Table(
    "profiles",
    metadata,
    Column("profile_id", String(40), primary_key=True),
    # A merged profile keeps a row pointing at the survivor, so old ids still resolve.
    Column("merged_into", String(40), nullable=True, index=True),
    Column("first_seen", _TS, nullable=True),
    Column("last_seen", _TS, nullable=True),
    Column("event_count", BigInteger, nullable=False, default=0),
)

identities = Table(
    "identities",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("value", String(512), primary_key=True),
    Column("profile_id", String(40), nullable=False, index=True),
)

profile_traits = Table(
    "profile_traits",
    metadata,
    Column("profile_id", String(40), primary_key=True),
    Column("key", String(256), primary_key=True),
    Column("value", JSON, nullable=True),
    # Last write wins by event timestamp, then by messageId, so any order gives one answer.
    Column("ts", _TS, nullable=False),
    Column("message_id", String(128), nullable=False),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source_id", String(32), nullable=False, index=True),
    Column("received_at", _TS, nullable=False),
    Column("reason", String(64), nullable=False),
    Column("field", String(256), nullable=True),
    Column("detail", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("replayed_at", _TS, nullable=True),
    Index("ix_quarantine_pending", "replayed_at", "id"),
)

consumer_offsets = Table(
    "consumer_offsets",
    metadata,
    Column("consumer", String(64), primary_key=True),
    Column("offset", BigInteger, nullable=False),
)

# -- segments ------------------------------------------------------------------
# Erasure of a person deletes their rows (by profile_id, including the ids merged into
# theirs) from segment_states, segment_members, segment_history, segment_timers,
# segment_outbox and segment_errors; segments and segment_versions hold no personal data.

segments = Table(
    "segments",
    metadata,
    Column("name", String(200), primary_key=True),
    # The newest version; live_version is the one whose states and members are stored
    # (None before the first backfill). pending: a backfill is due (new version, or a
    # segment it uses changed); generation counts backfills.
    Column("version", Integer, nullable=False),
    Column("live_version", Integer, nullable=True),
    Column("pending", Boolean, nullable=False, default=True),
    Column("generation", Integer, nullable=False, default=0),
    Column("created_at", _TS, nullable=False),
    Column("updated_at", _TS, nullable=False),
    Column("deleted_at", _TS, nullable=True),
)
"""A segment by name (unique); deleting it keeps the row, so versions keep counting."""

segment_versions = Table(
    "segment_versions",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("definition", JSON, nullable=False),
    # Names of the segments its in_segment nodes inline (transitively).
    Column("uses", JSON, nullable=False),
    Column("created_at", _TS, nullable=False),
)
"""Every version of every definition, as submitted (no personal data)."""

segment_states = Table(
    "segment_states",
    metadata,
    Column("segment", String(200), primary_key=True),
    Column("profile_id", String(40), primary_key=True, index=True),
    Column("state", LargeBinary, nullable=False),
    # The latest time the state was evaluated at: evaluation time never goes back.
    Column("evaluated_at", _TS, nullable=False),
)
"""Real-time evaluator state per (segment, profile). Personal: erase by profile_id."""

segment_members = Table(
    "segment_members",
    metadata,
    Column("segment", String(200), primary_key=True),
    Column("profile_id", String(40), primary_key=True, index=True),
    Column("version", Integer, nullable=False),
    Column("since", _TS, nullable=False),
)
"""Current members. Personal: erase by profile_id."""

segment_history = Table(
    "segment_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("segment", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("profile_id", String(40), nullable=False, index=True),
    Column("kind", String(8), nullable=False),
    Column("at", _TS, nullable=False),
    # Transitions of one (segment, profile) are numbered 1, 2, ...: the messageId of the
    # published event derives from it, so a transition is published once.
    Column("seq", Integer, nullable=False),
    UniqueConstraint("segment", "profile_id", "seq"),
    Index("ix_segment_history_segment_at", "segment", "at"),
)
"""Every entered / exited transition. Personal: erase by profile_id."""

segment_timers = Table(
    "segment_timers",
    metadata,
    Column("segment", String(200), primary_key=True),
    Column("profile_id", String(40), primary_key=True, index=True),
    Column("due_at", _TS, nullable=False, index=True),
)
"""When to re-check a profile with no new event (a window edge). Erase by profile_id."""

segment_outbox = Table(
    "segment_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(64), nullable=False, unique=True),
    Column("profile_id", String(40), nullable=False, index=True),
    Column("payload", LargeBinary, nullable=False),
    Column("created_at", _TS, nullable=False),
)
"""Segment Entered / Exited events committed but not yet in the log. The payload holds
the profile's user or anonymous id: erase by profile_id."""

segment_errors = Table(
    "segment_errors",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("segment", String(200), nullable=False, index=True),
    Column("version", Integer, nullable=False),
    Column("profile_id", String(40), nullable=False, index=True),
    Column("detail", Text, nullable=False),
    Column("at", _TS, nullable=False),
)
"""A segment that failed to evaluate for one profile (the others went on). Erase by
profile_id."""

# -- privacy -------------------------------------------------------------------
# Erasure of a person deletes their rows (by profile_id, including the ids merged into
# theirs) from consents and consent_history. The audit log holds ids and hashes only.

consents = Table(
    "consents",
    metadata,
    Column("profile_id", String(40), primary_key=True),
    Column("purpose", String(32), primary_key=True),
    Column("state", String(8), nullable=False),
    Column("source", String(32), nullable=False),
    Column("legal_basis", String(32), nullable=False),
    # The newest record by (at, ref) wins, so records applied in any order agree.
    Column("at", _TS, nullable=False),
    Column("ref", String(160), nullable=False),
)
"""The current consent state per (profile, purpose). Personal: erase by profile_id."""

consent_history = Table(
    "consent_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("profile_id", String(40), nullable=False, index=True),
    Column("purpose", String(32), nullable=False),
    Column("state", String(8), nullable=False),
    Column("source", String(32), nullable=False),
    Column("legal_basis", String(32), nullable=False),
    Column("at", _TS, nullable=False),
    # What set it: "<source>:<messageId>" for events, "api:<uuid>" for the API.
    Column("ref", String(160), nullable=False),
    Column("recorded_at", _TS, nullable=False),
)
"""Every consent change, append-only. Personal: erase by profile_id."""

audit_log = Table(
    "audit_log",
    metadata,
    # Numbered 1, 2, ... by the writer holding the head row: a gap is a removed entry.
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", _TS, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(256), nullable=False),
    # Canonical JSON (sorted keys, no spaces): hashed exactly as stored.
    Column("details", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
)
"""Append-only, hash-chained record of who changed what. Ids and hashes only, no PII."""

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)
"""One row (id 1, written by the first append): the last entry of the audit chain.
Appends lock it, so two writers never fork the chain; verification checks that the
chain ends where it says."""

# --- channels -----------------------------------------------------------------
# Erasure of a person deletes their rows (by profile_id) from channel_outbox and
# channel_suppressions; providers, templates and audiences hold no personal data (a
# provider's credentials are encrypted at rest). First, it queues the person's removal
# from the ad audiences they were uploaded to: channel_outbox rows whose profile_id starts
# with "erased:" and that hold hashed identifiers only (channels/removals.py).

channel_providers = Table(
    "channel_providers",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("channel", String(16), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    # Non-secret settings (hosts, sender, URLs) as given; credentials only encrypted.
    Column("config", JSON, nullable=False),
    Column("secret", LargeBinary, nullable=True),
    # Most sends per second through this provider (None: no limit).
    Column("rate_per_s", Integer, nullable=True),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_at", _TS, nullable=False),
    Column("updated_at", _TS, nullable=False),
)
"""Delivery providers; the newest enabled one of a channel sends its messages."""

channel_templates = Table(
    "channel_templates",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("channel", String(16), nullable=False),
    Column("subject", Text, nullable=True),
    Column("html", Text, nullable=True),
    Column("text", Text, nullable=False),
    Column("created_at", _TS, nullable=False),
    Column("updated_at", _TS, nullable=False),
)
"""Message templates (sandboxed Jinja2), no personal data."""

channel_outbox = Table(
    "channel_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # Unique: a second enqueue of one effect is a no-op, and the key names the send
    # towards the provider (Message-ID, idempotency headers).
    Column("idempotency_key", String(200), nullable=False, unique=True),
    Column("profile_id", String(40), nullable=False, index=True),
    Column("channel", String(16), nullable=False),
    Column("template_id", String(64), nullable=True),
    Column("variables", JSON, nullable=False),
    Column("journey_id", String(200), nullable=True),
    Column("journey_version", Integer, nullable=True),
    Column("node_id", String(200), nullable=True),
    Column("trigger", JSON, nullable=True),
    # pending -> sent | skipped | dead; a failed attempt stays pending with a later due_at.
    Column("status", String(8), nullable=False),
    # Why it is pending (retrying, paused, quiet_hours, ...), skipped or dead; for a sent
    # row None, or "resent" when it was in doubt.
    Column("reason", String(64), nullable=True),
    # Set before the provider is reached and cleared with the outcome: a row a deliverer
    # claims with it set was being sent when a deliverer died, so the provider may have it
    # already; it stays set until sent again (then recorded "resent").
    Column("in_doubt", Boolean, nullable=False, default=False, server_default=false()),
    Column("attempts", Integer, nullable=False, default=0),
    Column("failures", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    Column("due_at", _TS, nullable=False),
    # A claimed row is invisible to other deliverers until its lease ends.
    Column("lease_until", _TS, nullable=True),
    Column("created_at", _TS, nullable=False),
    Column("finished_at", _TS, nullable=True),
    Index("ix_channel_outbox_status_due_at", "status", "due_at"),
    Index("ix_channel_outbox_journey_id_node_id", "journey_id", "node_id"),
    Index("ix_channel_outbox_profile_id_finished_at", "profile_id", "finished_at"),
)
"""Every message to send and what became of it. Personal: erase by profile_id."""

channel_suppressions = Table(
    "channel_suppressions",
    metadata,
    Column("profile_id", String(40), primary_key=True, index=True),
    Column("channel", String(16), primary_key=True),
    Column("reason", String(64), nullable=False),
    Column("created_at", _TS, nullable=False),
)
"""Profiles a channel must not reach (bounces, complaints, manual). Erase by profile_id."""

channel_audiences = Table(
    "channel_audiences",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("segment", String(200), nullable=False, index=True),
    Column("platform", String(16), nullable=False),
    # The platform's audience / user list id.
    Column("external_id", String(200), nullable=False),
    # segment_history rows up to this id have been turned into uploads.
    Column("history_cursor", Integer, nullable=False, default=0),
    Column("created_at", _TS, nullable=False),
)
"""Ad audiences that follow a segment's membership (no personal data)."""

# --- journeys -----------------------------------------------------------------
# Erasure of a person deletes their rows (by profile_id) from journey_instances,
# journey_steps and journey_assignments; journeys and journey_versions hold no personal
# data. Without consent for a channel, a profile still walks the journey: its messages
# are skipped at delivery (counted as skipped, reason no_consent).

journeys = Table(
    "journeys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    # draft -> active <-> paused -> archived
    Column("status", String(10), nullable=False),
    # The newest version: profiles entering from now on walk it.
    Column("version", Integer, nullable=False),
    # A schedule entry's next run (None for other entries and when not active).
    Column("next_run_at", _TS, nullable=True),
    Column("created_at", _TS, nullable=False),
    Column("updated_at", _TS, nullable=False),
)
"""Journeys and their lifecycle state (no personal data)."""

journey_versions = Table(
    "journey_versions",
    metadata,
    Column("journey_id", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("definition", JSON, nullable=False),
    Column("created_at", _TS, nullable=False),
)
"""Every version of every journey definition, kept for the profiles still walking it."""

journey_instances = Table(
    "journey_instances",
    metadata,
    # "<journey>:<profile>:<seq>": one profile's seq-th entry into the journey.
    Column("id", String(120), primary_key=True),
    Column("journey_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("profile_id", String(40), nullable=False, index=True),
    Column("seq", Integer, nullable=False),
    Column("node", String(64), nullable=True),
    # arrive: execute the node; wait: waiting at it; woken: its awaited event came.
    Column("phase", String(8), nullable=False),
    Column("status", String(8), nullable=False),
    Column("reason", String(32), nullable=True),
    # The durable timer: the instance runs when due_at <= now (None: nothing to do).
    Column("due_at", _TS, nullable=True),
    Column("wait_event", String(200), nullable=True),
    Column("trigger", JSON, nullable=True),
    Column("entered_at", _TS, nullable=False),
    Column("updated_at", _TS, nullable=False),
    Column("exited_at", _TS, nullable=True),
    Column("converted_at", _TS, nullable=True),
    UniqueConstraint("journey_id", "profile_id", "seq"),
    Index("ix_journey_instances_status_due_at", "status", "due_at"),
    Index("ix_journey_instances_journey_id_status", "journey_id", "status"),
)
"""Per-profile journey state and timers. Personal: erase by profile_id."""

journey_steps = Table(
    "journey_steps",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("journey_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("profile_id", String(40), nullable=False, index=True),
    Column("instance_id", String(120), nullable=False),
    # The node reached; None for an entry refused.
    Column("node", String(64), nullable=True),
    # "reached", or why the profile could not enter (journeys.funnel.ENTRY_SKIPS: paused,
    # already_active, reentry_never, reentry_wait, max_concurrent), then on the instance id
    # the entry would have started. Entering, leaving and converting are on the instance row.
    Column("kind", String(16), nullable=False),
    Column("at", _TS, nullable=False),
    Index("ix_journey_steps_journey_id_node_kind", "journey_id", "node", "kind"),
)
"""The nodes each profile reached in each journey, in order, and the entries refused.
Personal: erase by profile_id."""

journey_assignments = Table(
    "journey_assignments",
    metadata,
    Column("journey_id", String(64), primary_key=True),
    Column("node", String(64), primary_key=True),
    Column("profile_id", String(40), primary_key=True, index=True),
    Column("version", Integer, nullable=False),
    Column("arm", String(32), nullable=False),
    Column("assigned_at", _TS, nullable=False),
)
"""Experiment assignments of splits and holdouts (stable per profile). Personal: erase
by profile_id."""
# --- erasure ------------------------------------------------------------------
# pii_keys rows are found by handle (an HMAC of an identifier, computed from the
# person's identities at erasure), through pii_key_handles or, for rows not yet indexed
# there, the partial index of unindexed rows; erasure deletes them, which is what makes the
# person's events in the log unreadable. erasures holds no PII: a keyed hash of the
# profile id and counts.

pii_keys = Table(
    "pii_keys",
    metadata,
    # Key order first: key ids are a per-process prefix and a counter, so a new key is an
    # append, not a write at a random place of an index (a page per new device).
    Column("key_id", String(16), primary_key=True),
    # HMAC(handle secret, "kind:value") of the identifier whose key this is. A handle may
    # get several keys (one per process that met it first, or after an erasure): the
    # sealed event names the one it used.
    Column("handle", String(40), primary_key=True),
    Column("secret", LargeBinary, nullable=False),
    Column("created_at", _TS, nullable=False),
    # Whether pii_key_handles holds the row yet (filled in bulk, off the collect path).
    Column("indexed", Boolean, nullable=False, server_default=false()),
    Index(
        "ix_pii_keys_key_id",
        "key_id",
        # As SQLAlchemy writes ``not_(indexed)`` for each, so that the planners see the
        # query's condition is the index's.
        sqlite_where=text("indexed = 0"),
        postgresql_where=text("NOT indexed"),
    ),
    sqlite_with_rowid=False,
)
"""Per-identity AES-256-GCM keys for the PII of events in the log (crypto-shredding)."""

pii_key_handles = Table(
    "pii_key_handles",
    metadata,
    Column("handle", String(40), primary_key=True),
    Column("key_id", String(16), primary_key=True),
    sqlite_with_rowid=False,
)
"""The handle index of pii_keys rows marked ``indexed`` (no secret, no PII: erased with
them)."""

privacy_secrets = Table(
    "privacy_secrets",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", LargeBinary, nullable=False),
    Column("created_at", _TS, nullable=False),
)
"""Server-wide secrets of the privacy layer (the HMAC key that names identities)."""

erasures = Table(
    "erasures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # HMAC-SHA256 of the erased profile id: proves which erasure a later request
    # refers to without keeping the id.
    Column("profile_hash", String(64), nullable=False, index=True),
    Column("actor", String(64), nullable=False),
    Column("requested_at", _TS, nullable=False),
    Column("completed_at", _TS, nullable=False),
    # Rows removed per store, and keys destroyed.
    Column("counts", JSON, nullable=False),
)
"""Every erasure: who, when, which profile (as a keyed hash), what was removed. No PII."""
# --- guard ---
# guard_anomalies.subject is a userId or anonymousId as sent (or a client IP): erasure
# deletes a person's rows by their identity values (the column is indexed). Block lists,
# counters and retention rules hold no personal data.

guard_blocks = Table(
    "guard_blocks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # Normalised CIDR text (ipaddress.ip_network(..., strict=False)): one row per network.
    Column("network", String(64), nullable=False, unique=True),
    Column("reason", Text, nullable=False),
    Column("created_at", _TS, nullable=False),
    Column("created_by", String(64), nullable=False),
)
"""IPv4 and IPv6 networks whose requests collect refuses (403)."""

guard_counters = Table(
    "guard_counters",
    metadata,
    Column("day", String(10), primary_key=True),
    Column("source_id", String(32), primary_key=True),
    # bot_crawler, bot_headless, rate_limited_key, rate_limited_ip, blocked, anomaly,
    # consent_dropped, consent_pseudonymised
    Column("kind", String(32), primary_key=True),
    Column("count", BigInteger, nullable=False),
)
"""What the guard caught, per UTC day, source and kind; every collector adds to it."""

guard_anomalies = Table(
    "guard_anomalies",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("subject", String(512), nullable=False, index=True),
    Column("source_id", String(32), nullable=False),
    Column("window_start", _TS, nullable=False),
    # Usual events per window (rounded) and the count over which events were quarantined.
    Column("baseline", Integer, nullable=False),
    Column("threshold", Integer, nullable=False),
    Column("detected_at", _TS, nullable=False, index=True),
)
"""A profile (kind "profile": its userId, else anonymousId) or an IP (kind "ip") over its
velocity threshold in a window: reported once per window; the excess is quarantined."""

retention_rules = Table(
    "retention_rules",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # "*" matches any source / any event type; the most specific rule wins.
    Column("source_id", String(32), nullable=False),
    Column("event_type", String(16), nullable=False),
    Column("days", Integer, nullable=False),
    Column("updated_at", _TS, nullable=False),
    UniqueConstraint("source_id", "event_type"),
)
"""How long events are kept, per source and event type (track, page, identify, ...)."""
# --- access -------------------------------------------------------------------
# Console users are staff, not the people events are about: these tables hold no
# profile_id and a person's erasure never touches them. Deleting a user deletes their
# sessions; the audit log names users by id only.

users = Table(
    "users",
    metadata,
    Column("id", String(32), primary_key=True),
    # Lower-cased and stripped, so one address is one user however it is typed.
    Column("email", String(320), nullable=False, unique=True),
    Column("role", String(32), nullable=False, index=True),
    # argon2id, in the PHC string format (parameters and salt included).
    Column("password_hash", String(256), nullable=False),
    Column("created_at", _TS, nullable=False),
    Column("updated_at", _TS, nullable=False),
)
"""Console users: an e-mail address, a role and an argon2id password hash."""

user_sessions = Table(
    "user_sessions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), nullable=False, index=True),
    # Only a SHA-256 of the session token is kept, like API keys.
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", _TS, nullable=False),
    Column("last_seen_at", _TS, nullable=False),
    Column("expires_at", _TS, nullable=False),
    Column("revoked_at", _TS, nullable=True),
)
"""Console sessions: valid until revoked, idle too long, or past ``expires_at``."""

login_failures = Table(
    "login_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # SHA-256 of the lower-cased e-mail tried, whether or not such a user exists.
    Column("subject", String(64), nullable=False, index=True),
    Column("at", _TS, nullable=False),
)
"""Recent failed (and in-flight) logins per address, for the lockout window."""
