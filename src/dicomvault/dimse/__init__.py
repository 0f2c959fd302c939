"""DIMSE services wired to the archive: Verification, Storage and Query/Retrieve SCP
(PS3.4 A, B, C).

The protocol engine is :mod:`dicomvault.net`; this package adds the archive handlers
(:mod:`~dicomvault.dimse.store`, :mod:`~dicomvault.dimse.find`,
:mod:`~dicomvault.dimse.move`, :mod:`~dicomvault.dimse.get`), the error-to-status table
(:mod:`dicomvault.dimse.status`) and :func:`~dicomvault.dimse.server.serve_dicom`.
"""
