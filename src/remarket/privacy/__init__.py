"""Privacy: consent ledger, hash-chained audit log, erasure (crypto-shredding), export and
retention."""

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
from remarket.privacy.erasers import (
    PERSONAL_TABLES,
    KeyEraser,
    ParquetEraser,
    QuarantineEraser,
    TableEraser,
    WarehouseEraser,
    needles,
    scan_log,
    standard_erasers,
)
from remarket.privacy.erasure import (
    Eraser,
    Erasure,
    ErasureRecord,
    ErasureRegistry,
    Subject,
)
from remarket.privacy.export import Exporter, ExportRegistry, export_document, standard_exporters
from remarket.privacy.keyring import Keyring
from remarket.privacy.retention import (
    RetentionJob,
    RetentionReport,
    RetentionRule,
    RetentionRules,
)
from remarket.privacy.rights import Rights, build_rights
from remarket.privacy.seal import DEFAULT_PII_FIELDS, Opener, Sealer
from remarket.privacy.sink import ConsentSink, consents_in
from remarket.privacy.tcf import TCF_PURPOSES, TCString, decode_tc_string, tcf_consents
from remarket.privacy.transactions import immediate

__all__ = [
    "DEFAULT_PII_FIELDS",
    "GENESIS",
    "LEGAL_BASES",
    "PERSONAL_TABLES",
    "PURPOSES",
    "STATES",
    "TCF_PURPOSES",
    "AuditEntry",
    "AuditLog",
    "AuditProblem",
    "ConsentLedger",
    "ConsentRecord",
    "ConsentSink",
    "Eraser",
    "Erasure",
    "ErasureRecord",
    "ErasureRegistry",
    "ExportRegistry",
    "Exporter",
    "KeyEraser",
    "Keyring",
    "LegalBasis",
    "Opener",
    "ParquetEraser",
    "Purpose",
    "QuarantineEraser",
    "RetentionJob",
    "RetentionReport",
    "RetentionRule",
    "RetentionRules",
    "Rights",
    "Sealer",
    "State",
    "Subject",
    "TCString",
    "TableEraser",
    "WarehouseEraser",
    "build_rights",
    "consents_in",
    "decode_tc_string",
    "entry_hash",
    "export_document",
    "immediate",
    "is_allowed",
    "needles",
    "scan_log",
    "standard_erasers",
    "standard_exporters",
    "tcf_consents",
    "verify_chain",
]
