"""dicomvault.net — a small, fast DICOM network engine (PS3.8 upper layer, PS3.7 DIMSE).

A reusable library: it imports nothing else of dicomvault but the implementation UID.

Serve::

    registry = ServiceRegistry()
    registry.add_verification()
    registry.add_store(MyStoreHandler())          # streaming C-STORE SCP
    await serve(registry, AcceptorPolicy(ae_title="ME"), port=11112, stop=stop_event)

Request::

    async with associate("pacs", 104, called_ae="PACS", contexts=[VERIFICATION]) as assoc:
        status = await assoc.echo()

Query/Retrieve (PS3.4 C.4): ``registry.add_query(C_FIND_RQ, handler, [STUDY_ROOT_FIND])``
with a :class:`QueryHandler` yielding :class:`Response` values; as SCU,
``async for response in assoc.find(STUDY_ROOT_FIND, identifier)`` (also ``move``, ``get``).

See ``docs/net.md`` for the reference.
"""

from dicomvault.net.acceptor import AcceptorAssociation, serve
from dicomvault.net.association import Association
from dicomvault.net.errors import (
    AssociationAborted,
    AssociationRejected,
    CommandDecodeError,
    DecodeError,
    NetError,
    NoPresentationContext,
    PDUTooLong,
    ProtocolStateError,
)
from dicomvault.net.fileio import FileInfo, NotDicomFile, read_file_info
from dicomvault.net.handlers import (
    SUCCESS,
    AcceptedContext,
    AccessPolicy,
    AssociationInfo,
    ContextFilter,
    DataSink,
    DimseStatus,
    Matches,
    NormalizedHandler,
    NRequest,
    NResponse,
    QueryHandler,
    QueryRequest,
    RejectAssociation,
    Response,
    ServiceRegistry,
    StoreHandler,
    StoreRequest,
    UserIdentityPolicy,
)
from dicomvault.net.items import RoleSelection, UserIdentity
from dicomvault.net.negotiation import AcceptorPolicy, negotiate
from dicomvault.net.requestor import (
    ContextSpec,
    RequestorAssociation,
    associate,
    contexts_for_files,
)
from dicomvault.net.sender import SendResult, collect_files, send_files
from dicomvault.net.service_user import NResult, ResponseStream, ServiceUser
from dicomvault.net.uids import (
    DEFAULT_TRANSFER_SYNTAXES,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STORAGE_SOP_CLASSES,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
    VERIFICATION,
)

__all__ = [
    "DEFAULT_TRANSFER_SYNTAXES",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "PATIENT_ROOT_FIND",
    "PATIENT_ROOT_GET",
    "PATIENT_ROOT_MOVE",
    "STORAGE_SOP_CLASSES",
    "STUDY_ROOT_FIND",
    "STUDY_ROOT_GET",
    "STUDY_ROOT_MOVE",
    "SUCCESS",
    "VERIFICATION",
    "AcceptedContext",
    "AcceptorAssociation",
    "AcceptorPolicy",
    "AccessPolicy",
    "Association",
    "AssociationAborted",
    "AssociationInfo",
    "AssociationRejected",
    "CommandDecodeError",
    "ContextFilter",
    "ContextSpec",
    "DataSink",
    "DecodeError",
    "DimseStatus",
    "FileInfo",
    "Matches",
    "NRequest",
    "NResponse",
    "NResult",
    "NetError",
    "NoPresentationContext",
    "NormalizedHandler",
    "NotDicomFile",
    "PDUTooLong",
    "ProtocolStateError",
    "QueryHandler",
    "QueryRequest",
    "RejectAssociation",
    "RequestorAssociation",
    "Response",
    "ResponseStream",
    "RoleSelection",
    "SendResult",
    "ServiceRegistry",
    "ServiceUser",
    "StoreHandler",
    "StoreRequest",
    "UserIdentity",
    "UserIdentityPolicy",
    "associate",
    "collect_files",
    "contexts_for_files",
    "negotiate",
    "read_file_info",
    "send_files",
    "serve",
]
