"""Index record fields (:class:`dicomvault.dicom.extract.Fields`): the ASCII fast path of
``Fields.text`` gives what the general decoding gives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dicomvault.dicom.charset import DEFAULT_CHARSET, resolve_charset
from dicomvault.dicom.extract import Fields
from dicomvault.dicom.reader import Element
from dicomvault.dicom.values import STRING_VRS, strings

TAG = 0x00081030


def _general(raw: bytes, vr: str, charset_terms: list[str]) -> str | None:
    """``Fields.text`` as it was before the fast path: always through ``strings``."""
    charset = resolve_charset(charset_terms)[0] if charset_terms else DEFAULT_CHARSET
    values = strings(raw, vr, charset, [])
    if vr == "PN":
        values = [v.rstrip("=") for v in values]
    value = "\\".join(values)
    return value if value.strip("\\ ") else None


@settings(max_examples=400, deadline=None)
@given(
    raw=st.binary(max_size=40).map(lambda b: bytes(c & 0x7F for c in b))
    | st.lists(st.sampled_from([b" ", b"\0", b"\\", b"=", b"^", b"A", b"1", b".", b"-"])).map(
        b"".join
    ),
    vr=st.sampled_from(sorted(STRING_VRS)),
    charset=st.sampled_from(
        [[], ["ISO_IR 100"], ["ISO_IR 192"], ["ISO 2022 IR 6", "ISO 2022 IR 87"]]
    ),
)
def test_text_matches_the_general_decoding(raw: bytes, vr: str, charset: list[str]) -> None:
    terms = resolve_charset(charset)[0] if charset else DEFAULT_CHARSET
    fields = Fields({TAG: Element(vr, raw, len(raw), 0)}, terms, True)
    expected = _general(raw, vr, charset) if raw else None
    assert fields.text(TAG) == expected


def test_text_of_non_ascii_and_escaped_values_still_decodes_with_the_charset() -> None:
    latin1 = Fields({TAG: Element("LO", b"Caf\xe9 \\ Cr\xe8me ", 13, 0)}, DEFAULT_CHARSET, True)
    assert latin1.text(TAG) == "Caf\xe9\\Cr\xe8me"
    japanese, _ = resolve_charset(["", "ISO 2022 IR 87"])
    raw = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B"
    fields = Fields({0x00100010: Element("PN", raw, len(raw), 0)}, japanese, True)
    assert fields.text(0x00100010) == "Yamada^Tarou=\u5c71\u7530^\u592a\u90ce"
