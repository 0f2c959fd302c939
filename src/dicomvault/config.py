"""Configuration: one TOML file plus ``DICOMVAULT_<SECTION>__<KEY>`` environment overrides.

Precedence, highest first: explicit CLI options, environment variables, the TOML file,
the defaults below. Defaults need no file at all (SQLite + files in ``./dicomvault-data``).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
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
    #: fsync blobs and their directory before answering success. Turn off only for tests.
    fsync: bool = True


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


class ServerSettings(_Section):
    #: Processes sharing the listening ports (SO_REUSEPORT).
    workers: int = Field(default=1, ge=1, le=64)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


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
    #: Associate with this AE over TLS (PS3.15 B.12) as an SCU, and expect it to.
    tls: bool = False
    #: The services this AE may use when it calls us.
    permissions: list[Permission] = Field(default_factory=lambda: list(ALL_PERMISSIONS))
    #: Accept this AE's associations only from ``host`` (or from ``hosts``).
    check_host: bool = False
    #: More addresses or names this AE may call from (with ``check_host``).
    hosts: list[str] = Field(default_factory=list)


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
    #: without a valid username and passcode (A-ASSOCIATE-RJ 1/1/1), except from loopback
    #: peers while ``trust_loopback`` holds; ``optional`` lets a valid user add the
    #: services of their role to the calling AE's.
    user_identity: Literal["optional", "required"] = "optional"


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
                for key, value in values.items():
                    setattr(getattr(settings, section), key, value)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    return settings
