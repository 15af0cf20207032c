"""The TC string decoder: a known IAB string, a round trip through an encoder, bad input."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remarket.privacy import TCF_PURPOSES, TCString, decode_tc_string, tcf_consents

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# From IAB Tech Lab's reference library (iabtcf-java, BitWriterTest): its decoded fields
# are asserted there, field by field.
IAB_EXAMPLE = "COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA"


def encode(tc: TCString, tail_bits: int = 0) -> str:
    """The core segment of ``tc`` (plus ``tail_bits`` zero bits), as a TC string does it."""
    fields = [
        (tc.version, 6),
        ((tc.created - EPOCH) // timedelta(milliseconds=100), 36),
        ((tc.last_updated - EPOCH) // timedelta(milliseconds=100), 36),
        (tc.cmp_id, 12),
        (tc.cmp_version, 12),
        (tc.consent_screen, 6),
        (
            (ord(tc.consent_language[0]) - 65) << 6 | (ord(tc.consent_language[1]) - 65),
            12,
        ),
        (tc.vendor_list_version, 12),
        (tc.policy_version, 6),
        (int(tc.service_specific), 1),
        (int(tc.use_non_standard_texts), 1),
        (sum(1 << (12 - i) for i in tc.special_feature_opt_ins), 12),
        (sum(1 << (24 - i) for i in tc.purposes_consent), 24),
        (0, tail_bits),
    ]
    bits = "".join(format(value, f"0{width}b") for value, width in fields if width)
    bits += "0" * (-len(bits) % 8)
    raw = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


deciseconds = st.integers(0, 2**36 - 1).map(lambda d: EPOCH + timedelta(milliseconds=100 * d))
tc_strings = st.builds(
    TCString,
    version=st.just(2),
    created=deciseconds,
    last_updated=deciseconds,
    cmp_id=st.integers(0, 4095),
    cmp_version=st.integers(0, 4095),
    consent_screen=st.integers(0, 63),
    consent_language=st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=2, max_size=2),
    vendor_list_version=st.integers(0, 4095),
    policy_version=st.integers(0, 63),
    service_specific=st.booleans(),
    use_non_standard_texts=st.booleans(),
    special_feature_opt_ins=st.frozensets(st.integers(1, 12)),
    purposes_consent=st.frozensets(st.integers(1, 24)),
)


def test_decodes_the_iab_example() -> None:
    tc = decode_tc_string(IAB_EXAMPLE)
    assert tc == TCString(
        version=2,
        created=datetime(2020, 1, 26, 17, 1, tzinfo=UTC),
        last_updated=datetime(2021, 2, 2, 17, 1, tzinfo=UTC),
        cmp_id=675,
        cmp_version=2,
        consent_screen=1,
        consent_language="EN",
        vendor_list_version=15,
        policy_version=2,
        service_specific=False,
        use_non_standard_texts=False,
        special_feature_opt_ins=frozenset({1}),
        purposes_consent=frozenset({2, 10}),
    )
    # The encoder agrees on every whole character of the 176 decoded bits (29 * 6 = 174).
    assert encode(tc)[:29] == IAB_EXAMPLE[:29]


@given(
    tc_strings,
    st.integers(0, 300),
    st.sampled_from(
        [
            "",
            ".IFoEUQQgAIQwgIwQABAEAAAAOIAACAIAAAAQAIAgEAACEAAAAAgAQBAAAAAAAGBAAgAAAAAAAAFAAECAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ]
    ),
)
def test_round_trips_through_an_encoder(tc: TCString, tail: int, segments: str) -> None:
    assert decode_tc_string(encode(tc, tail) + segments) == tc


@pytest.mark.parametrize(
    ("purposes", "expected"),
    [
        (set(range(1, 25)), {"advertising": True, "personalization": True, "analytics": True}),
        (
            {3, 4, 5, 6, 7, 8, 9, 10},
            {"advertising": False, "personalization": False, "analytics": False},
        ),
        ({1, 3, 4}, {"advertising": True, "personalization": False, "analytics": False}),
        ({1, 3}, {"advertising": False, "personalization": False, "analytics": False}),
        (
            {1, 5, 6, 7, 8, 9, 10},
            {"advertising": False, "personalization": True, "analytics": True},
        ),
        ({1, 7, 8, 9}, {"advertising": False, "personalization": False, "analytics": False}),
    ],
    ids=["all", "no-store-access", "ads", "ads-half", "content-and-measure", "measure-part"],
)
def test_purpose_mapping(purposes: set[int], expected: dict[str, bool]) -> None:
    tc = decode_tc_string(IAB_EXAMPLE)
    tc = TCString(
        **{**{f: getattr(tc, f) for f in tc.__slots__}, "purposes_consent": frozenset(purposes)}
    )
    assert decode_tc_string(encode(tc)) == tc
    assert tcf_consents(tc) == expected
    assert set(expected) == set(TCF_PURPOSES)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("", "non-empty"),
        ("BOEFEAyOEFEAyAHABDENAI4AAAB9vABAASA", "version 2"),
        ("CO!!", "base64url"),
        ("COtybn4PA_zT4KjACBENAPCIAEBA", "at least 176 bits"),
        ("C" + "A" * 10_000, "at most"),
    ],
    ids=["empty", "v1", "not-base64", "short", "huge"],
)
def test_bad_strings_are_refused_with_the_rule(text: str, rule: str) -> None:
    with pytest.raises(ValueError, match=rule):
        decode_tc_string(text)
