"""The HTTP side of the archive: DICOMweb (PS3.18) at ``/dicom-web``, ``/healthz`` and
``/metrics``. One module per service (``qido``, ``wado``, ``rendered``, ``stow``,
``delete``); every one goes through :class:`dicomvault.archive.Archive`, never to SQL or
files directly (DESIGN.md layers)."""

from dicomvault.web.app import create_app

__all__ = ["create_app"]
