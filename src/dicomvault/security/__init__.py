"""Security services (DESIGN.md): TLS contexts (PS3.15 B.12), development certificates.

Imports the standard library, ``cryptography`` and :mod:`dicomvault.model` only.
"""
