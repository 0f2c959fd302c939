"""Query/Retrieve FIND as plain values: levels, keys, queries, matches (PS3.4 C.4.1, C.6).

This is the contract between the protocol adapters (``dimse/`` decodes a C-FIND, C-MOVE
or C-GET Identifier into a :class:`Query` with ``dicom.identifier.decode_identifier``) and
the archive (:meth:`Archive.find` answers it with a :class:`FindResult` of
:class:`Match` values; :meth:`Archive.retrieve_instances` selects what to send).

Values only: this module imports nothing but the standard library and our errors.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from dicomvault.model.errors import DicomVaultError

#: PS3.4 Table C.4-1 (C-FIND), C.4-2 (C-MOVE), C.4-3 (C-GET): "Failure — Identifier does
#: not match SOP Class". Used when the *structure* of the Identifier is wrong for the
#: information model: no Query/Retrieve Level, a level the model does not have, keys
#: below the requested level in a hierarchical query, a missing unique key for a retrieve.
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
#: PS3.4 Table C.4-1: "Failure — Unable to process" (Cxxx). Used when a *value* cannot be
#: matched as PS3.4 C.2.2.2 defines: a malformed range, a wildcard in a UID key, a value
#: that is not valid for its VR.
UNABLE_TO_PROCESS: Final = 0xC000

#: (0008,0052) Query/Retrieve Level and (0008,0005) Specific Character Set.
QUERY_RETRIEVE_LEVEL: Final = 0x00080052
SPECIFIC_CHARACTER_SET: Final = 0x00080005


class Level(enum.Enum):
    """Query/Retrieve Level (0008,0052), PS3.4 C.6.1.1 / C.6.2.1."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        """0 for PATIENT … 3 for IMAGE: ``a.depth < b.depth`` means *a* is above *b*."""
        return _DEPTH[self]


_DEPTH: Final = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3}


class InformationModel(enum.Enum):
    """The Query/Retrieve information model; the value names its top level.

    PS3.4 C.6.1 Patient Root (PATIENT, STUDY, SERIES, IMAGE) and C.6.2 Study Root
    (STUDY, SERIES, IMAGE). The Patient/Study Only model is retired (PS3.4 C.6.3).
    """

    PATIENT_ROOT = "PATIENT"
    STUDY_ROOT = "STUDY"

    @property
    def levels(self) -> tuple[Level, ...]:
        """The levels of this model, top first."""
        return _LEVELS[self]


#: Computed once: every C-FIND asks several times (it was 15 % of a selective query).
_LEVELS: Final = {
    model: tuple(level for level in Level if level.depth >= Level(model.value).depth)
    for model in InformationModel
}


@dataclass(frozen=True)
class QueryKey:
    """One key of an Identifier (PS3.4 C.4.1.1.3).

    Attributes
    ----------
    tag : int
        The attribute tag, e.g. ``0x00100010``.
    keyword : str
        The DICOM keyword, e.g. ``"PatientName"``.
    vr : str
        The value representation from the data dictionary (``"PN"``, ``"DA"`` …).
    value : str or None
        The value as sent, decoded to Unicode with the request's Specific Character Set,
        multiple values joined by ``\\``. ``None`` or ``""``: universal matching / a
        return key (PS3.4 C.2.2.2.3).
    items : tuple of QueryKey, optional
        For an SQ key: the keys of its one item (sequence matching, PS3.4 C.2.2.2.6);
        ``()`` for an empty item, ``None`` for a zero-length sequence.
    """

    tag: int
    keyword: str
    vr: str
    value: str | None
    items: tuple[QueryKey, ...] | None = None


@dataclass(frozen=True)
class Query:
    """A decoded C-FIND / C-MOVE / C-GET Identifier.

    Attributes
    ----------
    model : InformationModel
        From the negotiated SOP Class.
    level : Level
        Query/Retrieve Level (0008,0052).
    keys : tuple of QueryKey
        Every other key of the Identifier, in tag order; neither Query/Retrieve Level nor
        Specific Character Set appear here (the latter was used to decode the values).
    relational : bool
        Relational queries were negotiated (PS3.4 C.4.1.2.2 and the extended negotiation
        of C.5.1.1.1); ``False`` means hierarchical (C.4.1.2.1).
    max_results : int or None
        A cap on the matches the caller wants; the archive also applies the
        ``query.max_results`` setting and uses the smaller.
    combined_datetime : bool
        Combined date and time range matching was negotiated (PS3.4 C.2.2.2.5, Table
        C.5-2 byte 2 "Date-time matching"): a date key and its time key (Study Date and
        Study Time …) form one date-time range instead of two independent ranges.
    offset : int
        Skip this many matches before the first one returned (PS3.18 8.3.4.4 ``offset``
        of QIDO-RS; C-FIND has none and leaves it 0). Matches come in a deterministic
        order (storage order of the level's entities), so pages do not overlap.
    """

    model: InformationModel
    level: Level
    keys: tuple[QueryKey, ...]
    relational: bool = False
    max_results: int | None = None
    combined_datetime: bool = False
    offset: int = 0

    def key(self, keyword: str) -> QueryKey | None:
        """The key named *keyword*, or ``None`` when the Identifier does not have it."""
        for key in self.keys:
            if key.keyword == keyword:
                return key
        return None


class InvalidQuery(DicomVaultError):
    """The Identifier cannot be answered; the message names the key.

    Attributes
    ----------
    status : int
        The DIMSE status to answer with (PS3.4 C.4.1.1.4, Table C.4-1):
        :data:`IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS` (0xA900) for a structural mismatch,
        :data:`UNABLE_TO_PROCESS` (0xC000) for a value that cannot be matched.
    keyword : str or None
        The offending key, when there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = UNABLE_TO_PROCESS,
        keyword: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.keyword = keyword


@dataclass(frozen=True)
class Match:
    """One C-FIND match (a pending response's Identifier, PS3.4 C.4.1.1.3.2).

    ``values`` maps tag → value for every key of the query, plus Query/Retrieve Level
    (0008,0052), the unique key of each level from the top of the model down to the
    query level, and Specific Character Set (0008,0005) as the stored data has it
    (``None`` = default repertoire; several studies with different sets give
    ``"ISO_IR 192"``). Values are ``str``, ``int`` (IS/US/UL counts and numbers),
    ``list[str]`` for multiple values, ``None`` for empty (zero length), a
    ``list[dict[int, object]]`` for a sequence (one dict per item, same rules).
    Person names are ``str`` as ``"Alphabetic=Ideographic=Phonetic"``.
    """

    values: dict[int, object]


class FindResult(Iterator[Match]):
    """The matches of one C-FIND, streamed as the index yields them.

    Iterate it; when iteration ends, :attr:`truncated` tells whether the cap
    (``Query.max_results`` / setting ``query.max_results``) cut the result short — the
    archive had at least one more match. The DIMSE side then ends with a failure or
    warning status of its choice instead of Success. Close it (or use it as a context
    manager) to release the database cursor when stopping early, e.g. on C-CANCEL.

    Parameters
    ----------
    matches : iterator of Match
        The source; it may yield more than *limit* matches (the index asks for one more
        than the cap so that truncation is known exactly, not guessed).
    limit : int or None
        The cap; ``None`` for none.
    close : callable, optional
        Called once, when the result is exhausted or closed.
    """

    def __init__(
        self,
        matches: Iterator[Match],
        *,
        limit: int | None = None,
        close: Callable[[], None] | None = None,
    ) -> None:
        self._matches = matches
        self._limit = limit
        self._close = close
        self._count = 0
        self._done = False
        #: True once the cap was hit: more matches existed than were returned.
        self.truncated = False

    @property
    def count(self) -> int:
        """How many matches were returned so far."""
        return self._count

    def __iter__(self) -> FindResult:
        return self

    def __next__(self) -> Match:
        if self._done:
            raise StopIteration
        try:
            match = next(self._matches)
        except StopIteration:
            self.close()
            raise
        except BaseException:
            self.close()
            raise
        if self._limit is not None and self._count >= self._limit:
            self.truncated = True
            self.close()
            raise StopIteration
        self._count += 1
        return match

    @property
    def closed(self) -> bool:
        """Whether the result is exhausted or closed (the cursor is released)."""
        return self._done

    def close(self) -> None:
        """Stop: release the cursor. Idempotent."""
        if self._done:
            return
        self._done = True
        close_source = getattr(self._matches, "close", None)
        if close_source is not None:
            close_source()
        if self._close is not None:
            self._close()

    def __enter__(self) -> FindResult:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
