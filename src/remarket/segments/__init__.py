"""Segments: definitions desugared to core nodes, evaluated in real time and as SQL."""

from __future__ import annotations

from remarket.segments.compile import DIALECTS, SCORES_DDL, compile_segment
from remarket.segments.desugar import (
    ConsentRewrite,
    CoreNode,
    CoreSegment,
    SegmentResolver,
    consent_from_trait,
    desugar,
)
from remarket.segments.leaves import ProfileState
from remarket.segments.matchers import EventView, view_of
from remarket.segments.realtime import RealtimeSegment, ScoreLookup, bucket_of

__all__ = [
    "DIALECTS",
    "SCORES_DDL",
    "ConsentRewrite",
    "CoreNode",
    "CoreSegment",
    "EventView",
    "ProfileState",
    "RealtimeSegment",
    "ScoreLookup",
    "SegmentResolver",
    "bucket_of",
    "compile_segment",
    "consent_from_trait",
    "desugar",
    "view_of",
]
