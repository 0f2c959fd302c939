"""Media types: parsing ``Accept`` and ``Content-Type`` (RFC 9110 12.5.1, 8.3) as PS3.18
8.3.3 uses them, with the ``accept`` query parameter (PS3.18 8.3.3.1) taking precedence
over the header.

A DICOMweb media range carries parameters that matter: ``multipart/related;
type="application/dicom"; transfer-syntax=*``. Parameters are kept (names lower-cased,
quotes removed); commas inside quoted strings do not split ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request

from dicomvault.web.errors import HTTPProblem

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
MULTIPART_RELATED = "multipart/related"


@dataclass(frozen=True)
class MediaRange:
    """One media range of an ``Accept`` header, or a ``Content-Type``.

    ``type`` is lower-case ``"type/subtype"`` (``"*/*"`` and ``"image/*"`` allowed);
    ``params`` the parameters other than ``q``; ``q`` the quality (0–1).
    """

    type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    def matches(self, media_type: str) -> bool:
        """Whether this range admits the concrete ``media_type`` (ignoring parameters)."""
        if self.type in ("*/*", media_type):
            return True
        main, _, sub = self.type.partition("/")
        return sub == "*" and media_type.startswith(main + "/")

    @property
    def related_type(self) -> str | None:
        """For ``multipart/related``: the ``type`` parameter, lower-cased."""
        value = self.params.get("type")
        return value.strip().lower() if value else None

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")

    def __str__(self) -> str:
        text = self.type
        for name, value in self.params.items():
            text += f'; {name}="{value}"' if _needs_quotes(value) else f"; {name}={value}"
        return text


def _needs_quotes(value: str) -> bool:
    return not value or any(c in value for c in ' ",;/=()<>@:\\[]?{}')


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double-quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            current.append(char)
            escaped = True
        elif char == '"':
            quoted = not quoted
            current.append(char)
        elif char == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def parse_media_type(text: str, *, what: str = "media type") -> MediaRange:
    """Parse one ``type/subtype; name=value …``.

    Raises
    ------
    ValueError
        Not of the form ``type/subtype`` or a parameter without ``=``; the message
        names the text.
    """
    pieces = _split(text, ";")
    media = pieces[0].strip().lower()
    main, slash, sub = media.partition("/")
    if not slash or not main or not sub or " " in media:
        raise ValueError(f"{what} {text.strip()!r} is not of the form type/subtype")
    params: dict[str, str] = {}
    q = 1.0
    for piece in pieces[1:]:
        if not piece.strip():
            continue
        name, eq, value = piece.partition("=")
        if not eq:
            raise ValueError(f"{what} {text.strip()!r}: parameter {piece.strip()!r} has no value")
        name = name.strip().lower()
        value = _unquote(value)
        if name == "q":
            try:
                q = float(value)
            except ValueError:
                raise ValueError(f"{what} {text.strip()!r}: q={value!r} is not a number") from None
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"{what} {text.strip()!r}: q={value} is not between 0 and 1")
        else:
            params[name] = value
    return MediaRange(media, params, q)


def parse_accept(text: str | None) -> list[MediaRange]:
    """The ranges of an ``Accept`` value, best first (by q, then as sent); ``*/*`` when
    there is none. Ranges with ``q=0`` are dropped (they say "not this")."""
    if text is None or not text.strip():
        return [MediaRange("*/*")]
    pieces = [piece for piece in _split(text, ",") if piece.strip()]
    ranges = [parse_media_type(piece, what="Accept") for piece in pieces]
    ranges = [r for r in ranges if r.q > 0]
    ranges.sort(key=lambda r: -r.q)  # stable: equal q keep the client's order
    return ranges


def accepted(request: Request) -> list[MediaRange]:
    """The media ranges the client accepts: the ``accept`` query parameter(s) if present
    (PS3.18 8.3.3.1), otherwise the ``Accept`` header(s).

    Raises
    ------
    HTTPProblem
        400 for a malformed value.
    """
    from_query = request.query_params.getlist("accept")
    try:
        if from_query:
            return parse_accept(",".join(from_query))
        headers = request.headers.getlist("accept")
        return parse_accept(",".join(headers) if headers else None)
    except ValueError as exc:
        raise HTTPProblem(400, str(exc)) from None


def content_type(request: Request) -> MediaRange:
    """The request's ``Content-Type``.

    Raises
    ------
    HTTPProblem
        415 when missing or malformed.
    """
    value = request.headers.get("content-type")
    if not value:
        raise HTTPProblem(415, "Content-Type is missing")
    try:
        return parse_media_type(value, what="Content-Type")
    except ValueError as exc:
        raise HTTPProblem(415, str(exc)) from None


def not_acceptable(ranges: list[MediaRange], offered: list[str]) -> HTTPProblem:
    """The 406 for a request none of whose ranges we can satisfy."""
    asked = ", ".join(str(r) for r in ranges)
    return HTTPProblem(
        406,
        f"cannot answer with any of the accepted media types ({asked})",
        available=offered,
    )


def choose(ranges: list[MediaRange], offered: list[str]) -> str:
    """The first of ``offered`` (concrete types, in our order of preference) that the best
    matching range admits; ranges are tried best first. Parameters are not compared:
    services with parameters that matter (``type``, ``transfer-syntax``) negotiate
    themselves.

    Raises
    ------
    HTTPProblem
        406 naming what was asked and what is available.
    """
    for media_range in ranges:
        for media_type in offered:
            if media_range.matches(media_type):
                return media_type
    raise not_acceptable(ranges, offered)
