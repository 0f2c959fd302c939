"""The Native DICOM Model (PS3.19 A.1) as XML, encoded from a DICOM JSON data set.

DICOM JSON (PS3.18 F.2) is what the archive keeps and builds answers in; the XML
representations of DICOMweb (QIDO-RS ``multipart/related; type="application/dicom+xml"``,
PS3.18 10.6.3.2, and WADO-RS metadata XML, PS3.18 10.4.3) are the same data set in the
Native DICOM Model, so one function maps one onto the other:

- each element becomes ``<DicomAttribute tag="GGGGEEEE" vr="VR" keyword="Keyword">``
  (keyword from the data dictionary, left out for private or unknown tags);
- values become ``<Value number="n">`` (numbered from 1, PS3.19 A.1.1); a ``null`` member
  of a multi-valued value becomes an empty ``<Value number="n"/>``;
- Person Names become ``<PersonName number="n">`` with ``Alphabetic``, ``Ideographic``
  and ``Phonetic`` groups of ``FamilyName``, ``GivenName``, ``MiddleName``,
  ``NamePrefix`` and ``NameSuffix`` (PS3.19 A.1.5; empty components left out);
- sequence items become ``<Item number="n">`` holding their attributes;
- ``BulkDataURI`` becomes ``<BulkData uri="…"/>``, ``InlineBinary`` ``<InlineBinary>``.

Characters XML 1.0 cannot carry (C0 controls other than TAB, LF, CR) are dropped: the
document must stay well-formed whatever a modality stored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Final
from xml.sax.saxutils import escape, quoteattr

from pydicom.datadict import keyword_for_tag

#: PS3.19 A.1: the namespace of the Native DICOM Model.
NAMESPACE: Final = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
_DECLARATION: Final = '<?xml version="1.0" encoding="UTF-8"?>\n'
_OPEN: Final = f'<NativeDicomModel xmlns="{NAMESPACE}" xml:space="preserve">'
_CLOSE: Final = "</NativeDicomModel>"
#: PS3.19 A.1.5: the components of a Person Name group, in PS3.5 6.2 order.
_PN_COMPONENTS: Final = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
_PN_GROUPS: Final = ("Alphabetic", "Ideographic", "Phonetic")
_NOT_XML: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

DicomJson = Mapping[str, Mapping[str, Any]]


def _text(value: object) -> str:
    return escape(_NOT_XML.sub("", str(value)))


@lru_cache(maxsize=4096)
def _keyword(tag: str) -> str:
    try:
        number = int(tag, 16)
    except ValueError:
        return ""
    if (number >> 16) % 2:  # private: no dictionary keyword
        return ""
    return keyword_for_tag(number) or ""


def _person_name(number: int, value: object) -> str:
    if not isinstance(value, Mapping):
        return f'<PersonName number="{number}"/>'
    out = [f'<PersonName number="{number}">']
    for group in _PN_GROUPS:
        text = value.get(group)
        if not text:
            continue
        out.append(f"<{group}>")
        for name, component in zip(_PN_COMPONENTS, str(text).split("^"), strict=False):
            if component:
                out.append(f"<{name}>{_text(component)}</{name}>")
        out.append(f"</{group}>")
    out.append("</PersonName>")
    return "".join(out)


def _attribute(tag: str, element: Mapping[str, Any], out: list[str]) -> None:
    vr = str(element.get("vr", "UN"))
    keyword = _keyword(tag)
    head = f'<DicomAttribute tag="{tag}" vr="{vr}"'
    if keyword:
        head += f' keyword="{keyword}"'
    values = element.get("Value")
    if "BulkDataURI" in element:
        out.append(f"{head}><BulkData uri={quoteattr(str(element['BulkDataURI']))}/>")
    elif "InlineBinary" in element:
        out.append(f"{head}><InlineBinary>{_text(element['InlineBinary'])}</InlineBinary>")
    elif not values:
        out.append(head + "/>")
        return
    elif vr == "SQ":
        out.append(head + ">")
        for number, item in enumerate(values, 1):
            out.append(f'<Item number="{number}">')
            if isinstance(item, Mapping):
                _elements(item, out)
            out.append("</Item>")
    elif vr == "PN":
        out.append(head + ">")
        out.extend(_person_name(number, value) for number, value in enumerate(values, 1))
    else:
        out.append(head + ">")
        for number, value in enumerate(values, 1):
            if value is None:
                out.append(f'<Value number="{number}"/>')
            else:
                out.append(f'<Value number="{number}">{_text(value)}</Value>')
    out.append("</DicomAttribute>")


def _elements(dataset: DicomJson, out: list[str]) -> None:
    for tag in sorted(dataset):
        _attribute(tag.upper(), dataset[tag], out)


def native_xml(dataset: DicomJson) -> bytes:
    """One data set in DICOM JSON (PS3.18 F.2) as a Native DICOM Model document (PS3.19
    A.1), UTF-8 with an XML declaration.

    Parameters
    ----------
    dataset : mapping
        ``{"GGGGEEEE": {"vr": VR, "Value": [...]} | {"vr": VR, "BulkDataURI": URI} |
        {"vr": VR, "InlineBinary": BASE64} | {"vr": VR}}``; sequence items are data sets
        of the same form, PN values ``{"Alphabetic": …, "Ideographic": …, "Phonetic": …}``.

    Returns
    -------
    bytes
        The XML document, attributes in ascending tag order.
    """
    out = [_DECLARATION, _OPEN]
    _elements(dataset, out)
    out.append(_CLOSE)
    return "".join(out).encode("utf-8")


def native_xml_many(datasets: Sequence[DicomJson]) -> list[bytes]:
    """:func:`native_xml` of each data set (one multipart part each, PS3.18 10.6.3.2)."""
    return [native_xml(dataset) for dataset in datasets]
