"""Keys the index has no column for: matched and answered from stored DICOM JSON.

Each instance's data set is kept as DICOM JSON (PS3.18 F.2) without bulk data; a key
that is not a column (an "additional key", PS3.4 C.4.1.1.3.1: "return what is stored,
empty otherwise") reads it from there. Values become :class:`~dicomvault.model.query.Match`
values (PN ``A=I=P``, IS/US… ``int``, DS ``str``, several values a ``list``, a sequence
a list of item dicts) and text for :func:`~dicomvault.model.matching.matches`. Bulk data
(``BulkDataURI``, ``InlineBinary``) is not returned: such keys come back empty.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from dicomvault.model.matching import Condition, Kind, Stored, matches
from dicomvault.model.query import QueryKey

_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")

Element = Mapping[str, Any]
DataSet = Mapping[int, Element]


def load(text: str | None) -> DataSet:
    """The stored JSON text as tag -> element."""
    return _item(json.loads(text or "{}"))


def _item(item: Mapping[str, Any]) -> dict[int, Element]:
    return {int(tag, 16): element for tag, element in item.items()}


def _text(vr: str, value: Any) -> str:
    if value is None:
        return ""
    if vr == "PN" and isinstance(value, dict):
        return "=".join(value.get(k, "") for k in _PN_GROUPS).rstrip("=")
    return str(value)


def value_of(element: Element | None) -> object:
    """A Match value for one JSON element (``None`` when empty or bulk data)."""
    if element is None:
        return None
    vr = element.get("vr", "UN")
    values = element.get("Value")
    if not values:
        return None
    if vr == "SQ":
        return [{tag: value_of(el) for tag, el in _item(raw).items()} for raw in values]
    out: list[object] = []
    for value in values:
        if vr in ("PN", "DS") or value is None or isinstance(value, str):
            out.append(_text(vr, value))
        else:
            out.append(value)
    return out[0] if len(out) == 1 else out


def stored_of(element: Element | None) -> Stored:
    """The element as :class:`Stored` text and items, for matching."""
    if element is None:
        return Stored()
    vr = element.get("vr", "UN")
    values = element.get("Value") or []
    if vr == "SQ":
        return Stored(items=[{t: stored_of(el) for t, el in _item(raw).items()} for raw in values])
    return Stored(texts=[_text(vr, v) for v in values])


def _selected_items(
    key: QueryKey, condition: Condition, element: Element, case_insensitive: bool
) -> object:
    """PS3.4 C.2.2.2.6: the matching items, with only the requested attributes (all of
    them for a zero-length item)."""
    raw_items = [_item(raw) for raw in element.get("Value") or []]
    if not raw_items:
        return None
    if not key.items:
        return value_of(element)
    chosen = []
    for raw in raw_items:
        stored = Stored(items=[{t: stored_of(el) for t, el in raw.items()}])
        if condition.kind is not Kind.SEQUENCE or matches(
            condition, stored, case_insensitive=case_insensitive
        ):
            chosen.append({k.tag: value_of(raw.get(k.tag)) for k in key.items})
    return chosen or None


def answer(
    dataset: DataSet, key: QueryKey, condition: Condition, case_insensitive: bool
) -> tuple[bool, object]:
    """Match *key* against the stored data set; ``(matched, value to return)``."""
    element = dataset.get(key.tag)
    if not matches(condition, stored_of(element), case_insensitive=case_insensitive):
        return False, None
    if element is not None and (key.vr == "SQ" or element.get("vr") == "SQ"):
        return True, _selected_items(key, condition, element, case_insensitive)
    return True, value_of(element)
