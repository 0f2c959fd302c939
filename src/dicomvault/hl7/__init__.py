"""HL7 v2 adapter: the ORM^O01 order feed of the Modality Worklist over MLLP (issue 6).

A protocol adapter like ``dimse/`` and ``web/`` (DESIGN.md): it parses and answers HL7
and calls ``archive/`` (the worklist), never ``index/``, ``storage/`` or pydicom.
``mllp`` is the framing and the listener; ``message`` the HL7 v2 delimiters, errors and
ACKs; ``orm`` the ORM^O01 checks and mapping; ``feed`` the glue ``dicomvault serve`` runs.
See docs/hl7.md.
"""
