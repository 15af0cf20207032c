"""Privacy: the consent ledger (API, events, TCF strings), the audit log, retention."""

from __future__ import annotations

from remarket.privacy.audit import (
    GENESIS,
    AuditEntry,
    AuditLog,
    AuditProblem,
    entry_hash,
    verify_chain,
)
from remarket.privacy.consent import (
    LEGAL_BASES,
    PURPOSES,
    STATES,
    ConsentLedger,
    ConsentRecord,
    LegalBasis,
    Purpose,
    State,
    is_allowed,
)
from remarket.privacy.retention import (
    RetentionJob,
    RetentionReport,
    RetentionRule,
    RetentionRules,
)
from remarket.privacy.sink import ConsentSink, consents_in
from remarket.privacy.tcf import TCF_PURPOSES, TCString, decode_tc_string, tcf_consents
from remarket.privacy.transactions import immediate

__all__ = [
    "GENESIS",
    "LEGAL_BASES",
    "PURPOSES",
    "STATES",
    "TCF_PURPOSES",
    "AuditEntry",
    "AuditLog",
    "AuditProblem",
    "ConsentLedger",
    "ConsentRecord",
    "ConsentSink",
    "LegalBasis",
    "Purpose",
    "RetentionJob",
    "RetentionReport",
    "RetentionRule",
    "RetentionRules",
    "State",
    "TCString",
    "consents_in",
    "decode_tc_string",
    "entry_hash",
    "immediate",
    "is_allowed",
    "tcf_consents",
    "verify_chain",
]
