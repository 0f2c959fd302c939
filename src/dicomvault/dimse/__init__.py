"""DIMSE services wired to the archive: Verification and Storage SCP (PS3.4 A, B).

The protocol engine is :mod:`dicomvault.net`; this package adds the archive handler,
the error-to-status table (:mod:`dicomvault.dimse.status`) and :func:`serve_dicom`.
"""
