"""``dicomvault tls``: TLS helpers (PS3.15 B.12). ``make-dev-certs`` writes a private CA,
a server and a client certificate to try DICOM over TLS and HTTPS."""

from __future__ import annotations

from pathlib import Path

import click

from dicomvault.cli.common import fail, out
from dicomvault.security.certs import VALID_DAYS, make_dev_certs


@click.group("tls")
def tls_group() -> None:
    """TLS (PS3.15 B.12): certificates for DICOM over TLS and HTTPS."""


@tls_group.command("make-dev-certs")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--hostname",
    "hostnames",
    multiple=True,
    help="Another DNS name or IP address for the server certificate (repeatable); "
    "localhost, 127.0.0.1 and ::1 are always in it.",
)
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def make_dev_certs_command(directory: Path, hostnames: tuple[str, ...], force: bool) -> None:
    """Write a development CA, a server certificate and a client certificate (PEM, keys
    0600) into DIRECTORY, and print the settings that use them.

    For trying TLS out, not for production: the CA's key sits next to the certificates.
    """
    try:
        certs = make_dev_certs(directory, hostnames, overwrite=force)
    except FileExistsError as exc:
        fail(f"{exc} already exist(s); use --force to overwrite")
    except OSError as exc:
        fail(f"cannot write to {directory}: {exc.strerror or exc}")
    names = ", ".join(certs.server_names)
    out.print(f"wrote (valid {VALID_DAYS} days):", highlight=False)
    rows = [
        (certs.ca_certificate, "CA certificate (give it to peers to trust)"),
        (certs.ca_key, "CA private key (0600)"),
        (certs.server_certificate, f"server certificate for {names}"),
        (certs.server_key, "server private key (0600)"),
        (certs.client_certificate, "client certificate"),
        (certs.client_key, "client private key (0600)"),
    ]
    width = max(len(str(path)) for path, _ in rows)
    for path, what in rows:
        out.print(f"  {str(path).ljust(width)}  {what}", highlight=False)
    root = directory.resolve()
    out.print("\nsettings for the TOML configuration file:\n", highlight=False)
    out.print(
        "[tls]\n"
        "enabled = true                 # DICOM over TLS on dicom_port\n"
        "dicom_port = 2762\n"
        "https = true                   # HTTPS on http.port\n"
        f'certificate = "{root / "server.pem"}"\n'
        f'private_key = "{root / "server-key.pem"}"\n'
        f'ca_certificates = "{root / "ca.pem"}"\n'
        'client_certificates = "optional"\n',
        highlight=False,
        markup=False,
    )
    out.print(
        "try it: /usr/bin/echoscu --enable-tls "
        f"{root / 'client-key.pem'} {root / 'client.pem'} --add-cert-file {root / 'ca.pem'} "
        "-aec DICOMVAULT localhost 2762",
        highlight=False,
        soft_wrap=True,
    )


__all__ = ["tls_group"]
