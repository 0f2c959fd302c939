"""A storage commitment report on a new association to a ``tls = true`` remote goes over
TLS (PS3.15 B.12) with our certificate; the receiver (pynetdicom) requires one."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from commitment_peers import Reports, action_info, free_port, request
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

from dicomvault.security.certs import DevCerts, make_dev_certs

LISTEN = free_port()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def workflow_overrides(certs: DevCerts) -> dict[str, Any]:
    return {
        "commitment": {"same_association": False},
        "tls": {
            "certificate": certs.client_certificate,
            "private_key": certs.client_key,
            "ca_certificates": certs.ca_certificate,
        },
        "remotes": {"modality": {"ae_title": "MODALITY", "host": "localhost", "port": LISTEN,
                                 "tls": True}},
    }  # fmt: skip


def test_report_over_tls(wf_server: Any, stored: Any, certs: DevCerts) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=certs.ca_certificate)
    context.verify_mode = ssl.CERT_REQUIRED  # the archive must present its certificate
    context.load_cert_chain(certs.server_certificate, certs.server_key)
    reports = Reports()
    peers: list[Any] = []

    def on_report(event: Any) -> tuple[int, None]:
        peers.append(event.assoc.dul.socket.socket.getpeercert())
        return reports.handler(event)

    ae = AE(ae_title="MODALITY")
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    server = ae.start_server(
        ("127.0.0.1", LISTEN),
        block=False,
        ssl_context=context,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
    )
    try:
        info = action_info(stored(1))
        assert request(wf_server.port, info) == 0x0000
        event_type, result, _ = reports.wait(20)
    finally:
        server.shutdown()
    assert event_type == 1 and result.TransactionUID == info.TransactionUID
    assert peers and peers[0]  # a verified client certificate: the report came over TLS
