"""dicomvault — an open-source DICOM archive (PACS) in Python."""

__version__ = "0.1.0"

#: Our Implementation Class UID (PS3.7 D.3.3.2) and version name; the root is a
#: UUID-derived UID (PS3.5 B.2) so it needs no registered org root.
IMPLEMENTATION_CLASS_UID = "2.25.207169934447066185917428916541307412481"
IMPLEMENTATION_VERSION_NAME = "DICOMVAULT_010"
