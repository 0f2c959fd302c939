"""Remote AEs managed at run time (issue 7, part 2): the service layer.

The archive's remote AEs are the ``[remotes.NAME]`` entries of the configuration file
(read-only here: :attr:`Settings.remotes`) plus the entries of the ``remote_aes`` table,
added, replaced and removed with ``PUT``/``DELETE /api/remotes/{name}`` or
``dicomvault remote add|remove``. A name is unique across both; a change to a name of the
file is refused (:class:`RemoteConflict`, HTTP 409).

:func:`effective_remotes` is what DIMSE uses at run time (calling-AE recognition and
permissions, C-MOVE destinations, storage commitment reports). It is cached per open
archive for :data:`CACHE_SECONDS`: every worker process sees a change within that time
without a database query per association.

Validation (:func:`validate_remote`): the entry is a :class:`~dicomvault.config.RemoteAE`
(pydantic, strict types), its AE title follows PS3.5 Table 6.2-1 (value representation AE:
1 to 16 characters of the default character repertoire, no backslash or control
character, not only spaces; leading and trailing spaces are not significant and are
dropped), the port is 1-65535, the permissions a subset of
:data:`~dicomvault.config.ALL_PERMISSIONS`. An AE title is data, never a path: nothing
here or in ``dimse/`` builds a file name from it (a title such as ``../x`` is a valid AE
string and is stored and matched as such).

Each change records a Security Alert, Software Configuration (PS3.15 A.5.3.11).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from dicomvault.archive import audit
from dicomvault.archive.archive import Archive
from dicomvault.config import ALL_PERMISSIONS, RemoteAE, Settings
from dicomvault.index import Index
from dicomvault.index import remotes as sql
from dicomvault.model.errors import DicomVaultError, NotFound

log = logging.getLogger("dicomvault.archive")

#: How long :func:`effective_remotes` reuses what it read from the index.
CACHE_SECONDS = 2.0
#: The fields of an entry (the body of ``PUT /api/remotes/{name}``).
FIELDS = ("ae_title", "host", "port", "tls", "permissions", "check_host", "hosts", "deidentify")
#: Names of entries: they appear in URLs, TOML keys and the command line.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HOST_MAX = 253

Source = Literal["config", "api"]


class RemoteError(DicomVaultError):
    """An entry that cannot be stored; ``field`` names the offending member (or ``""``)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class RemoteConflict(DicomVaultError):
    """A change to an entry of the configuration file, which is read-only at run time."""


@dataclass(frozen=True, slots=True)
class Remote:
    """One remote AE and where it comes from."""

    name: str
    remote: RemoteAE
    source: Source
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name, "source": self.source}
        body.update(self.remote.model_dump(mode="json"))
        body["created_at"] = _when(self.created_at)
        body["updated_at"] = _when(self.updated_at)
        return body


Place = Archive | tuple[Settings, Index]


def _place(where: Place) -> tuple[Settings, Index]:
    return (where.settings, where.index) if isinstance(where, Archive) else where


def _when(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands timezone-aware columns back naive (UTC)
        value = value.replace(tzinfo=UTC)
    return value.isoformat(timespec="seconds")


# -- validation ---------------------------------------------------------------------------


def ae_title_problem(title: str) -> str | None:
    """Why ``title`` is not an AE value (PS3.5 Table 6.2-1), or ``None``."""
    if not title.strip(" "):
        return "AE title is empty or only spaces"
    if len(title) > 16:
        return f"AE title {title[:40]!r} is longer than 16 characters"
    if any(not 0x20 <= ord(c) <= 0x7E for c in title):
        return f"AE title {title!r} has a control or non-ASCII character"
    if "\\" in title:
        return f"AE title {title!r} has a backslash"
    return None


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name an entry, or ``None``."""
    if not _NAME.match(name):
        return (
            f"remote name {name[:80]!r}: expected 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return None


def _host_problem(host: str, field: str) -> str | None:
    if not host or len(host) > _HOST_MAX or any(c.isspace() or not c.isprintable() for c in host):
        return f"{field}: {host[:80]!r} is not a host name or address"
    return None


def validate_remote(data: Mapping[str, Any]) -> RemoteAE:
    """``data`` (the JSON members of an entry) as a :class:`RemoteAE`.

    Raises
    ------
    RemoteError
        With ``field`` set to the first member in error.
    """
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise RemoteError(
            f"{unknown[0]}: unknown member (expected {', '.join(FIELDS)})", unknown[0]
        )
    for field in ("ae_title", "host", "port"):
        if field not in data:
            raise RemoteError(f"{field}: required", field)
    try:
        remote = RemoteAE.model_validate(dict(data), strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        where = ".".join(str(p) for p in first["loc"])
        if field == "permissions":
            raise RemoteError(
                f"{where}: {first['msg']} (one of {', '.join(ALL_PERMISSIONS)})", field
            ) from None
        raise RemoteError(f"{where}: {first['msg']}", field) from None
    problem = ae_title_problem(remote.ae_title)
    if problem is not None:
        raise RemoteError(f"ae_title: {problem}", "ae_title")
    problem = _host_problem(remote.host, "host")
    if problem is None:
        problem = next(
            (p for h in remote.hosts if (p := _host_problem(h, "hosts")) is not None), None
        )
    if problem is not None:
        raise RemoteError(problem, problem.partition(":")[0])
    return remote.model_copy(
        update={
            "ae_title": remote.ae_title.strip(" "),
            "permissions": sorted(set(remote.permissions), key=ALL_PERMISSIONS.index),
        }
    )


# -- the effective set, cached ------------------------------------------------------------

_CACHE: weakref.WeakKeyDictionary[Archive, tuple[float, dict[str, RemoteAE]]] = (
    weakref.WeakKeyDictionary()
)
_CACHE_LOCK = threading.Lock()


def effective_remotes(archive: Archive) -> dict[str, RemoteAE]:
    """The ``[remotes.NAME]`` of the file and those of the index, by name (file first).

    Read at most every :data:`CACHE_SECONDS` per process; the same ``dict`` object is
    returned while cached (callers may key their own derived tables on its identity).
    When the index cannot be read, the last known set (or the file's) is used and the
    failure logged. Do not modify the result.
    """
    now = time.monotonic()
    cached = _CACHE.get(archive)
    if cached is not None and cached[0] > now:
        return cached[1]
    with _CACHE_LOCK:
        cached = _CACHE.get(archive)
        if cached is not None and cached[0] > now:
            return cached[1]
        merged: dict[str, RemoteAE] = dict(archive.settings.remotes)
        try:
            rows = sql.list_remotes(archive.index)
        except Exception as exc:  # index unavailable for a moment: keep what we had
            log.warning("remote AEs: cannot read the index, using the last known set: %s", exc)
            fallback = cached[1] if cached is not None else merged
            _CACHE[archive] = (now + CACHE_SECONDS, fallback)
            return fallback
        for row in rows:
            if row.name not in merged:  # a file entry added later wins
                merged[row.name] = _remote_of(row)
        _CACHE[archive] = (now + CACHE_SECONDS, merged)
        return merged


def forget_cache(archive: Archive) -> None:
    """Make the next :func:`effective_remotes` of this process read the index."""
    with _CACHE_LOCK:
        _CACHE.pop(archive, None)


def _remote_of(row: sql.RemoteRow) -> RemoteAE:
    return RemoteAE.model_construct(
        ae_title=row.ae_title,
        host=row.host,
        port=row.port,
        tls=row.tls,
        permissions=[p for p in row.permissions if p in ALL_PERMISSIONS],
        check_host=row.check_host,
        hosts=list(row.hosts),
        deidentify=row.deidentify,
    )


# -- reading and changing -----------------------------------------------------------------


def list_remotes(where: Place) -> list[Remote]:
    """Every remote AE: the file's (``source`` ``config``) then the index's (``api``)."""
    settings, index = _place(where)
    found = [Remote(name, r, "config") for name, r in sorted(settings.remotes.items())]
    found += [
        Remote(row.name, _remote_of(row), "api", row.created_at, row.updated_at)
        for row in sql.list_remotes(index)
        if row.name not in settings.remotes
    ]
    return found


def get_remote(where: Place, name: str) -> Remote:
    """The entry ``name``; :class:`NotFound` when neither the file nor the index has it."""
    settings, index = _place(where)
    if name in settings.remotes:
        return Remote(name, settings.remotes[name], "config")
    row = sql.get_remote(index, name)
    if row is None:
        raise NotFound(f"no remote AE {name!r}")
    return Remote(row.name, _remote_of(row), "api", row.created_at, row.updated_at)


def _check_name(settings: Settings, name: str) -> None:
    if name in settings.remotes:
        raise RemoteConflict(
            f"remote AE {name!r} is configured in the file ([remotes.{name}]): "
            "change it there and restart"
        )
    problem = name_problem(name)
    if problem is not None:
        raise RemoteError(problem, "name")


def _row(name: str, remote: RemoteAE, now: datetime) -> sql.RemoteRow:
    return sql.RemoteRow(
        name=name,
        ae_title=remote.ae_title,
        host=remote.host,
        port=remote.port,
        tls=remote.tls,
        permissions=list(remote.permissions),
        check_host=remote.check_host,
        hosts=list(remote.hosts),
        created_at=now,
        updated_at=now,
        deidentify=remote.deidentify,
    )


def _describe(remote: RemoteAE) -> str:
    return (
        f"AE title {remote.ae_title!r} at {remote.host}:{remote.port}"
        f"{' (TLS)' if remote.tls else ''}, permissions {', '.join(remote.permissions) or 'none'}"
        f"{', host checked' if remote.check_host else ''}"
    )


def _changed(where: Place, actor: str, name: str, what: str) -> None:
    """Security Alert, Software Configuration (PS3.15 A.5.3.11), and the cache."""
    settings, index = _place(where)
    if isinstance(where, Archive):
        forget_cache(where)
    log.info("remote AEs: %s by %s", what, actor)
    try:
        audit.configuration_changed(
            settings, index, user=actor, subject=f"remote AE {name}", description=what
        )
    except Exception as exc:  # the change is made; a failed audit write is logged
        log.error("audit: cannot record the change of remote AE %r: %s", name, exc)


def put_remote(
    where: Place, name: str, data: Mapping[str, Any], *, actor: str
) -> tuple[Remote, bool]:
    """Create or replace the index entry ``name`` from ``data``; (entry, created).

    Raises
    ------
    RemoteError
        Bad name or bad member (``field`` says which).
    RemoteConflict
        ``name`` is an entry of the configuration file.
    """
    settings, index = _place(where)
    _check_name(settings, name)
    remote = validate_remote(data)
    now = datetime.now(UTC)
    row = _row(name, remote, now)
    created = False
    if not sql.replace_remote(index, name, row):
        try:
            sql.insert_remote(index, name, row)
            created = True
        except sql.RemoteExists:  # added meanwhile: replace it
            sql.replace_remote(index, name, row)
    verb = "added" if created else "replaced"
    _changed(where, actor, name, f"remote AE {name!r} {verb}: {_describe(remote)}")
    return get_remote(where, name), created


def add_remote(where: Place, name: str, data: Mapping[str, Any], *, actor: str) -> Remote:
    """Add the index entry ``name``; :class:`RemoteError` when the name is taken."""
    settings, index = _place(where)
    _check_name(settings, name)
    remote = validate_remote(data)
    try:
        sql.insert_remote(index, name, _row(name, remote, datetime.now(UTC)))
    except sql.RemoteExists:
        raise RemoteError(
            f"remote AE {name!r} already exists (remove it first, or PUT /api/remotes/{name})",
            "name",
        ) from None
    _changed(where, actor, name, f"remote AE {name!r} added: {_describe(remote)}")
    return get_remote(where, name)


def update_remote(where: Place, name: str, data: Mapping[str, Any], *, actor: str) -> Remote:
    """Replace the existing index entry ``name``; :class:`NotFound` when there is none."""
    settings, index = _place(where)
    _check_name(settings, name)
    remote = validate_remote(data)
    if not sql.replace_remote(index, name, _row(name, remote, datetime.now(UTC))):
        raise NotFound(f"no remote AE {name!r}")
    _changed(where, actor, name, f"remote AE {name!r} replaced: {_describe(remote)}")
    return get_remote(where, name)


def remove_remote(where: Place, name: str, *, actor: str) -> None:
    """Remove the index entry ``name``.

    Raises
    ------
    RemoteConflict
        ``name`` is an entry of the configuration file.
    NotFound
        No such entry.
    """
    settings, index = _place(where)
    if name in settings.remotes:
        _check_name(settings, name)  # RemoteConflict
    if not sql.delete_remote(index, name):
        raise NotFound(f"no remote AE {name!r}")
    _changed(where, actor, name, f"remote AE {name!r} removed")
