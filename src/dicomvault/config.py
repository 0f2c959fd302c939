"""Configuration: one TOML file plus ``DICOMVAULT_<SECTION>__<KEY>`` environment overrides.

Precedence, highest first: explicit CLI options, environment variables, the TOML file,
the defaults below. Defaults need no file at all (SQLite + files in ``./dicomvault-data``).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from dicomvault.model.errors import ConfigError

ENV_PREFIX = "DICOMVAULT_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageSettings(_Section):
    #: The data directory: holds ``index.sqlite3`` (by default) and the blob store.
    path: Path = Path("./dicomvault-data")
    #: What to do with the same SOP Instance UID arriving with different bytes.
    duplicates: Literal["reject", "keep-first", "overwrite"] = "overwrite"
    #: Make blobs durable before answering success. Turn off only for tests.
    fsync: bool = True
    #: How: ``batch`` — one syncfs of the storage filesystem per index batch (Linux;
    #: elsewhere ``blob``); ``blob`` — an fsync of every blob and its directory, for a data
    #: directory on a filesystem shared with heavy writers (syncfs waits for their data).
    sync: Literal["batch", "blob"] = "batch"


class IndexSettings(_Section):
    #: SQLAlchemy URL; empty means SQLite at ``<storage.path>/index.sqlite3``.
    url: str = ""
    #: Values longer than this many bytes become BulkDataURI in stored metadata.
    bulk_data_threshold: int = Field(default=1024, ge=64)


class DicomSettings(_Section):
    host: str = "0.0.0.0"
    port: int = Field(default=11112, ge=0, le=65535)
    ae_title: str = "DICOMVAULT"
    #: Refuse associations whose Called AE Title is not ours (PS3.8 A-ASSOCIATE-RJ 1/2/7).
    check_called_ae: bool = True
    #: Calling AE titles allowed to associate; empty means any.
    allowed_calling_aes: list[str] = Field(default_factory=list)
    #: Maximum PDU length we advertise (PS3.8 D.1), bytes.
    max_pdu: int = Field(default=262144, ge=4096)
    #: Simultaneous associations beyond which we reject with reason 2 (local limit).
    max_associations: int = Field(default=64, ge=1)
    #: Seconds an association may stay silent before we abort it.
    idle_timeout: float = Field(default=60.0, gt=0)
    #: ARTIM timer (PS3.8 9.1.5), seconds.
    artim_timeout: float = Field(default=30.0, gt=0)
    #: Seconds between the Pending responses of a C-GET (its sub-operation counts); the
    #: standard makes them optional (PS3.4 C.4.3.3.1). 0 sends one after every
    #: sub-operation, as a C-MOVE always does (its requester has no other progress).
    get_pending_interval: float = Field(default=1.0, ge=0)

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        # PS3.5 6.2 AE: 1-16 characters, no backslash or control characters.
        stripped = value.strip()
        if not 1 <= len(stripped) <= 16 or "\\" in stripped or not stripped.isprintable():
            raise ValueError("must be 1 to 16 printable characters without a backslash")
        return stripped


class HttpSettings(_Section):
    #: Loopback by default: this version has no HTTP users yet, and an archive answering
    #: anyone on the network (with DELETE) is what Orthanc's CVE-2025-0896 was about.
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: The URL clients reach the server by (e.g. behind a reverse proxy), used in
    #: RetrieveURL and BulkDataURI; empty: taken from each request's Host header.
    base_url: str = ""
    #: Origins browser viewers may call from (CORS); ``["*"]`` allows any.
    cors_origins: list[str] = Field(default_factory=list)
    #: Whether DELETE on studies, series and instances is allowed (PS3.18 10.4 delete).
    allow_delete: bool = True
    #: STOW-RS: largest request body accepted (bytes); larger answers 413.
    max_body_bytes: int = Field(default=4 * 1024**3, ge=1024)
    #: STOW-RS: most parts in one request; more answers 413.
    max_parts: int = Field(default=10000, ge=1)
    #: QIDO-RS: results per page when the request has no ``limit`` (0 = up to
    #: ``query.max_results``).
    default_limit: int = Field(default=0, ge=0)
    #: Responses at least this large are gzip-compressed for clients that ask
    #: (``Accept-Encoding: gzip``); DICOM files, frames and images never are.
    gzip_min_size: int = Field(default=1024, ge=0)


#: ``server.workers = "auto"`` starts at most this many processes: they share one index
#: writer lock, so beyond the cores that parse and hash, more only add memory.
AUTO_WORKERS_MAX = 8


class ServerSettings(_Section):
    #: Processes sharing the listening ports (SO_REUSEPORT): a number, or ``"auto"`` for
    #: one per CPU available to the server (at most :data:`AUTO_WORKERS_MAX`). Python
    #: runs one thread at a time per process; a second process puts a second core to
    #: work, at the price of its memory and of sharing the index writer lock. Measured
    #: on 2 cores that also ran the senders (docs/benchmarks.md, eighth session): two
    #: workers took 0.5 MB C-STOREs 0-13 % faster and 10 KB ones no faster, with three
    #: times the memory, so the default stays 1.
    workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = 1
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def process_count(self) -> int:
        """How many serving processes ``workers`` asks for on this machine."""
        if self.workers != "auto":
            return self.workers
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cpus = os.cpu_count() or 1
        return max(1, min(cpus, AUTO_WORKERS_MAX))


class QuerySettings(_Section):
    #: Match Person Name keys case-insensitively (PS3.4 C.2.2.2.1 leaves it to the SCP).
    case_insensitive_names: bool = True
    #: At most this many C-FIND matches per query (0 = no cap); the caller is told when
    #: the cap cut a result short.
    max_results: int = Field(default=10000, ge=0)


#: DICOM services a remote AE may be allowed to use (issue "Security", part 2).
Permission = Literal["echo", "store", "find", "move", "get", "commit", "worklist", "mpps"]
ALL_PERMISSIONS: tuple[Permission, ...] = (
    "echo", "store", "find", "move", "get", "commit", "worklist", "mpps"
)  # fmt: skip


_ECHO_STORE: list[Permission] = ["echo", "store"]


class RemoteAE(_Section):
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    #: Associate with this AE over TLS (PS3.15 B.12) as an SCU, and recognize it only
    #: when it calls the DICOM over TLS port.
    tls: bool = False
    #: The services this AE may use when it calls us.
    permissions: list[Permission] = Field(default_factory=lambda: list(ALL_PERMISSIONS))
    #: Accept this AE's associations only from ``host`` (or from ``hosts``).
    check_host: bool = False
    #: More addresses or names this AE may call from (with ``check_host``).
    hosts: list[str] = Field(default_factory=list)
    #: Send this AE de-identified copies only (PS3.15 Annex E, with the options of
    #: ``deidentify.wado_*``), as C-MOVE destination and as C-GET requestor: a research
    #: PACS or a teleconsultation partner.
    deidentify: bool = False


class TlsSettings(_Section):
    """DIMSE over TLS and HTTPS (PS3.15 B.12, BCP 195: TLS 1.2 and 1.3 only)."""

    #: Listen for DIMSE over TLS on ``tls.dicom_port`` (in addition to the plain port).
    enabled: bool = False
    dicom_port: int = Field(default=2762, ge=0, le=65535)
    #: Serve HTTP over TLS on ``http.port``.
    https: bool = False
    #: PEM files: our certificate (chain) and its private key.
    certificate: Path | None = None
    private_key: Path | None = None
    #: PEM bundle of the CAs we trust for client certificates and for remotes.
    ca_certificates: Path | None = None
    #: Whether peers must present a certificate signed by ``ca_certificates``.
    client_certificates: Literal["none", "optional", "required"] = "optional"


class SecuritySettings(_Section):
    """Who may do what over DIMSE (issue "Security", part 2)."""

    #: Services a calling AE that no ``[remotes.NAME]`` entry names may use; an empty
    #: list rejects its association (A-ASSOCIATE-RJ reason 3, calling AE not recognized).
    unknown_ae_permissions: list[Permission] = Field(default_factory=lambda: _ECHO_STORE.copy())
    #: Peers on a loopback address may use every service.
    trust_loopback: bool = True
    #: User Identity Negotiation (PS3.7 D.3.3.7): ``required`` rejects an association
    #: without a valid username and passcode or JWT (A-ASSOCIATE-RJ 1/1/1), except from loopback
    #: peers while ``trust_loopback`` holds; ``optional`` lets a valid user add the
    #: services of their role to the calling AE's.
    user_identity: Literal["optional", "required"] = "optional"


class WorklistSettings(_Section):
    """Modality Worklist (PS3.4 K) and its HL7 v2 order feed (issue 6, part 2)."""

    #: Answer Modality Worklist C-FIND (SOP Class 1.2.840.10008.5.1.4.31); false leaves
    #: the SOP class out (its presentation contexts are refused).
    enabled: bool = True
    #: Largest JSON body accepted by POST / PUT /api/worklist (bytes); larger is 413.
    max_item_bytes: int = Field(default=1024 * 1024, ge=1024)

    # -- HL7 v2 ORM^O01 order feed over MLLP (hl7/, docs/hl7.md) --
    #: MLLP port of the HL7 order feed; 0 = off (2575 is the usual HL7 port).
    hl7_port: int = Field(default=0, ge=0, le=65535)
    #: Address the HL7 listener binds.
    hl7_host: str = "0.0.0.0"
    #: Largest HL7 message accepted (bytes); a larger one is answered AR and the
    #: connection closed.
    hl7_max_message_bytes: int = Field(default=1024 * 1024, ge=1024)
    #: Seconds an HL7 connection may stay silent before it is closed.
    hl7_idle_timeout: float = Field(default=300.0, gt=0)
    #: Modality (OBR-24) → Scheduled Station AE Title of the items the feed creates.
    hl7_station_ae_titles: dict[str, str] = Field(default_factory=dict)


class RetentionSettings(_Section):
    """Deletion, IOCM rejection, retention rules and the storage quota (issue 6, part 4)."""

    class Rule(_Section):
        """``[[retention.rules]]``: delete studies older than ``older_than_days``."""

        #: Studies with a series of this Modality (0008,0060); empty: every study.
        modality: str = Field(default="", max_length=16)
        older_than_days: int = Field(ge=1)
        #: Age by Study Date (0008,0020) — studies without one are kept — or by the
        #: time the archive last received an instance of the study.
        by: Literal["study_date", "received"] = "study_date"

        @field_validator("modality")
        @classmethod
        def _modality(cls, value: str) -> str:
            # PS3.5 6.2 CS: upper case, digits, space, underscore.
            stripped = value.strip()
            if stripped and not all(c.isupper() or c.isdigit() or c in " _" for c in stripped):
                raise ValueError("must be a Modality code such as CT or MR")
            return stripped

    rules: list[Rule] = Field(default_factory=list)
    #: Seconds between passes of the background runner (deletion queue, rejected
    #: instances past their grace period, retention rules, quota recycling).
    interval_seconds: float = Field(default=300.0, gt=0)
    #: Days the blobs of instances rejected by an IOCM rejection note stay on disk
    #: (hidden at once) before the runner removes them.
    rejection_grace_days: float = Field(default=0.0, ge=0)
    #: Blob bytes the archive may hold; 0 = no quota.
    quota_bytes: int = Field(default=0, ge=0)
    #: Over the quota: ``reject`` new instances (C-STORE 0xA700, STOW-RS 507), or
    #: ``recycle`` the least recently received unprotected studies.
    quota_policy: Literal["reject", "recycle"] = "reject"
    #: ``recycle`` deletes until the archive holds at most this fraction of the quota.
    quota_low_water: float = Field(default=0.9, gt=0, le=1)


class CommitmentSettings(_Section):
    """Storage Commitment Push Model SCP (PS3.4 J) and MPPS SCP (PS3.4 F) (issue 6)."""

    #: Send the report on the requester's association while it is still open; otherwise
    #: (and when that fails) on a new association to its ``[remotes]`` entry.
    same_association: bool = True
    #: Seconds before the first retry of a report that could not be delivered; doubled
    #: after each failure up to ``retry_max``.
    retry_initial: float = Field(default=10.0, gt=0)
    retry_max: float = Field(default=600.0, gt=0)
    #: Give up (job state "expired") this many hours after the request.
    deadline_hours: float = Field(default=24.0, gt=0)
    #: How often (seconds) the report sender looks for due reports.
    poll_interval: float = Field(default=2.0, gt=0)


class AuditSettings(_Section):
    """Audit trail in the DICOM Audit Message format (PS3.15 A.5) (issue 7, part 5)."""

    #: Record audit messages at all (file, index table, syslog).
    enabled: bool = True
    #: Append-only log of RFC 5424 lines, one message each; empty means
    #: ``<storage.path>/audit/audit.log``.
    file: str = ""
    #: Audit repository to send each message to: ``udp://host:514`` (RFC 5426) or
    #: ``tls://host:6514`` (RFC 5425, verified against ``tls.ca_certificates``); empty: none.
    syslog: str = ""
    #: Messages waiting for the background writer at most; beyond, new ones are dropped
    #: (and counted in the log) rather than slow the archive down.
    queue_size: int = Field(default=10000, ge=10)
    #: AuditSourceID of every message; empty means ``dicom.ae_title``.
    source_id: str = ""
    #: AuditEnterpriseSiteID (e.g. the hospital); empty: not sent.
    site_id: str = ""
    #: Rotate the audit log in-process when a write would take it past this many bytes
    #: (``audit.log`` → ``audit.log.1`` …); 0: never (rotate externally: logrotate
    #: ``create`` mode and SIGHUP).
    max_log_bytes: int = Field(default=0, ge=0)
    #: Rotated audit log files kept (``audit.log.1`` … ``.N``); older ones are deleted.
    keep_files: int = Field(default=10, ge=1)
    #: Delete rows of the ``audit_events`` index table older than this many days (hourly,
    #: by ``serve``); 0: keep them forever. The log file is never pruned.
    retention_days: int = Field(default=0, ge=0)
    #: WADO-RS reads (instances, frames, bulk data, rendered, thumbnails, metadata) of a
    #: study by one user from one address are tallied in memory and recorded as ONE
    #: message once no such read came for this many seconds (or the tally has been open
    #: 60 s; at shutdown); 0: one message per request.
    http_coalesce_seconds: float = Field(default=10.0, ge=0, le=60)

    @field_validator("syslog")
    @classmethod
    def _syslog(cls, value: str) -> str:
        value = value.strip()
        if value and not (value.startswith("udp://") or value.startswith("tls://")):
            raise ValueError("must be udp://host:port, tls://host:port or empty")
        return value


class DeidentifySettings(_Section):
    """De-identification (PS3.15 Annex E; docs/deidentification.md)."""

    #: The secret UIDs, patient pseudonyms and date shifts are derived from (HMAC-SHA256);
    #: empty: a random 32-byte secret created once in ``<storage.path>/deidentify.key``
    #: (mode 0600). The same secret gives the same replacements in every run. A
    #: ``SecretStr``: ``config show`` prints it masked.
    secret: SecretStr = SecretStr("")
    # -- the options of WADO-RS retrievals by users whose role is ``researcher`` --
    wado_retain_uids: bool = False
    wado_retain_dates: Literal["none", "full", "modified"] = "none"
    wado_retain_patient_characteristics: bool = False
    wado_retain_device_identity: bool = False
    wado_retain_institution_identity: bool = False
    wado_retain_safe_private: bool = False
    wado_clean_descriptors: bool = False
    #: Send instances with Burned In Annotation YES to researchers anyway (otherwise the
    #: retrieval is refused, 409).
    wado_allow_burned_in: bool = False

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if raw and len(raw.encode("utf-8")) < 16:
            raise ValueError("must be empty or at least 16 bytes")
        return value


#: JWS algorithms a JWT may be signed with (RFC 7518 3.1): public-key ones only. ``none``
#: and the HMAC ``HS*`` family are never accepted: an HMAC "verified" with a public key
#: as its secret is the algorithm-confusion attack.
JwtAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]  # fmt: skip
_JWT_DEFAULT_ALGS: list[JwtAlgorithm] = ["RS256", "ES256"]


class JwtSettings(_Section):
    """JSON Web Tokens from an identity provider (OpenID Connect) for HTTP and DIMSE user
    identity (issue 7, parts 3 and 4). Off unless ``jwks_file`` or ``jwks_url`` is set."""

    #: The identity provider's public keys as a JWK Set (RFC 7517 5) in a local file…
    jwks_file: Path | None = None
    #: …or fetched from this URL (https, or http on a loopback host), e.g. the
    #: ``jwks_uri`` of the provider's OpenID configuration.
    jwks_url: str = ""
    #: Seconds to wait for the JWKS URL.
    jwks_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    #: A token naming an unknown key id refetches the JWKS at most this often (seconds).
    jwks_refresh_seconds: float = Field(default=60.0, ge=0)
    #: The fetched JWKS is refetched when older than this (seconds): removed keys stop
    #: being trusted.
    jwks_max_age_seconds: float = Field(default=3600.0, gt=0)
    #: The ``iss`` every token must carry (RFC 7519 4.1.1), exactly.
    issuer: str = ""
    #: ``aud`` values accepted (RFC 7519 4.1.3): a token must name one of them.
    audience: list[str] = Field(default_factory=list)
    #: Clock skew tolerated on ``exp``, ``nbf`` and ``iat`` (seconds).
    leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    algorithms: list[JwtAlgorithm] = Field(default_factory=lambda: _JWT_DEFAULT_ALGS.copy())
    #: Claim holding the user's roles or groups: a name, or a dotted path into nested
    #: objects (``realm_access.roles``); a list of strings or a space-separated string.
    role_claim: str = "roles"
    #: Identity provider role or group → our role; the highest mapped role wins.
    role_map: dict[str, Literal["researcher", "viewer", "uploader", "admin"]] = Field(
        default_factory=dict
    )
    #: Claim naming the user in logs (``sub`` when the token lacks it).
    username_claim: str = "preferred_username"

    @field_validator("audience", mode="before")
    @classmethod
    def _one_audience(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, value: str) -> str:
        if not value:
            return value
        url = urlsplit(value)
        loopback = url.hostname in ("localhost", "127.0.0.1", "::1")
        if url.scheme != "https" and not (url.scheme == "http" and loopback):
            raise ValueError("must be an https:// URL (http:// only to a loopback host)")
        return value

    @model_validator(mode="after")
    def _complete(self) -> JwtSettings:
        if not self.enabled:
            return self
        missing = [
            key
            for key, value in (
                ("jwt.issuer", self.issuer),
                ("jwt.audience", self.audience),
                ("jwt.role_map", self.role_map),
                ("jwt.algorithms", self.algorithms),
            )
            if not value
        ]
        if self.jwks_file is not None and self.jwks_url:
            raise ValueError("set jwt.jwks_file or jwt.jwks_url, not both")
        if missing:
            raise ValueError(f"JWT bearer tokens need {', '.join(missing)} as well")
        return self

    @property
    def enabled(self) -> bool:
        """Whether JWTs are accepted: a JWKS is configured."""
        return self.jwks_file is not None or bool(self.jwks_url)


class Settings(BaseSettings):
    """The effective configuration (``dicomvault config show`` prints it)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid"
    )

    storage: StorageSettings = Field(default_factory=StorageSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    query: QuerySettings = Field(default_factory=QuerySettings)
    remotes: dict[str, RemoteAE] = Field(default_factory=dict)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    worklist: WorklistSettings = Field(default_factory=WorklistSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    commitment: CommitmentSettings = Field(default_factory=CommitmentSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    jwt: JwtSettings = Field(default_factory=JwtSettings)
    deidentify: DeidentifySettings = Field(default_factory=DeidentifySettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file's values arrive as init kwargs; environment variables beat them.
        return (env_settings, init_settings)

    @property
    def index_url(self) -> str:
        if self.index.url:
            return self.index.url
        return f"sqlite:///{(self.storage.path / 'index.sqlite3').resolve()}"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        env = ENV_PREFIX + "__".join(str(p) for p in item["loc"]).upper()
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown setting"
        parts.append(f"{key} (env {env}): {msg}")
    return "invalid configuration: " + "; ".join(parts)


def load_settings(
    config_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Build the effective settings.

    Parameters
    ----------
    config_file
        A TOML file; ``None`` means defaults (or ``$DICOMVAULT_CONFIG`` when set).
    overrides
        Nested values from CLI options, e.g. ``{"storage": {"path": Path("x")}}``;
        these win over everything else.

    Raises
    ------
    ConfigError
        The file is missing or not TOML, or a value is invalid; the message names the key.
    """
    data: dict[str, Any] = {}
    if config_file is None and os.environ.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(os.environ[ENV_PREFIX + "CONFIG"])
    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file {config_file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"configuration file {config_file} is not valid TOML: {exc}"
            ) from None
    try:
        settings = Settings(**data)
        if overrides:
            merged = _merge(settings.model_dump(), overrides)
            settings = Settings.model_validate(merged)
            # model_validate re-reads the environment; explicit overrides must win.
            for section, values in overrides.items():
                target = getattr(settings, section)
                if not isinstance(target, BaseModel):
                    continue  # a table of entries ([remotes]): validated with the merge
                for key, value in values.items():
                    setattr(target, key, value)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    return settings
