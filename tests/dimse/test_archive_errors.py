"""Failures become statuses (PS3.4 B.2.3); an abort discards only the partial instance."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest
from peers import PYDICOM_TEST_FILES, ServerThread, data_set_bytes, dcmtk

from dicomvault.archive import Archive
from dicomvault.dimse.store import WRITE_BATCH
from dicomvault.model.errors import NotFound
from dicomvault.net import AssociationAborted, associate, contexts_for_files, read_file_info
from dicomvault.net import commands as c
from dicomvault.net.association import MCH_COMMAND, MCH_LAST
from dicomvault.net.pdu import encode_pdata_header

CT = PYDICOM_TEST_FILES / "CT_small.dcm"
MR = PYDICOM_TEST_FILES / "MR_small.dcm"


def _run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_uid_mismatch_is_a900(vault: Archive, vault_server: ServerThread) -> None:
    info = read_file_info(CT)

    async def run() -> tuple[int, str | None]:
        async with associate(
            "127.0.0.1",
            vault_server.port,
            called_ae="DICOMVAULT",
            contexts=contexts_for_files([info]),
        ) as assoc:
            status = await assoc.send_data_set(
                data_set_bytes(CT), info.sop_class_uid, "1.2.3.4.5.6.7", info.transfer_syntax_uid
            )
            return status.status, status.error_comment

    code, comment = _run(run())  # type: ignore[misc]
    assert code == 0xA900
    assert comment and "1.2.3.4" in comment and len(comment) <= 64
    with pytest.raises(NotFound):
        vault.get_instance(info.sop_instance_uid)


def test_garbage_is_c000(vault: Archive, vault_server: ServerThread) -> None:
    info = read_file_info(CT)

    async def run() -> tuple[int, str | None]:
        async with associate(
            "127.0.0.1",
            vault_server.port,
            called_ae="DICOMVAULT",
            contexts=contexts_for_files([info]),
        ) as assoc:
            status = await assoc.send_data_set(
                b"\x00" * 1000, info.sop_class_uid, info.sop_instance_uid, info.transfer_syntax_uid
            )
            return status.status, status.error_comment

    code, comment = _run(run())  # type: ignore[misc]
    assert 0xC000 <= code <= 0xCFFF
    assert comment


def test_abort_discards_partial_keeps_acknowledged(
    vault: Archive, vault_server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "dicomvault.dimse")
    ct, mr = read_file_info(CT), read_file_info(MR)

    async def run() -> None:
        async with associate(
            "127.0.0.1",
            vault_server.port,
            called_ae="DICOMVAULT",
            contexts=contexts_for_files([ct, mr]),
        ) as assoc:
            assert (await assoc.send_file(CT)).status == 0  # acknowledged: must stay
            ctx = assoc.find_context(mr.sop_class_uid, mr.transfer_syntax_uid)
            assert ctx is not None
            command = c.encode_command(
                {
                    c.AffectedSOPClassUID: mr.sop_class_uid,
                    c.CommandField: c.C_STORE_RQ,
                    c.MessageID: assoc.next_message_id(),
                    c.Priority: 0,
                    c.CommandDataSetType: 0,
                    c.AffectedSOPInstanceUID: mr.sop_instance_uid,
                }
            )
            # More than one spool batch, so a spool file exists when we abort.
            partial = data_set_bytes(MR)[:2000] + bytes(WRITE_BATCH + 150_000)
            assoc.send(encode_pdata_header(ctx.id, MCH_COMMAND | MCH_LAST, len(command)) + command)
            for pos in range(0, len(partial), 16384):
                piece = partial[pos : pos + 16384]
                assoc.send(encode_pdata_header(ctx.id, 0, len(piece)) + piece)
            await assoc.drain()
            spool = vault.store.root / ".tmp"
            for _ in range(100):  # the partial instance is being spooled
                if spool.exists() and any(spool.iterdir()):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("no spool file while receiving")
            assoc.abort("test aborts mid data set")
            raise AssociationAborted("done")

    with pytest.raises(AssociationAborted):
        _run(run())
    spool = vault.store.root / ".tmp"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and ("aborted" not in caplog.text or any(spool.iterdir())):
        time.sleep(0.05)
    assert vault.get_instance(ct.sop_instance_uid).size > 0
    with pytest.raises(NotFound):
        vault.get_instance(mr.sop_instance_uid)
    leftovers = (
        [p for p in (vault.store.root / ".tmp").iterdir()]
        if (vault.store.root / ".tmp").exists()
        else []
    )
    assert leftovers == []
    assert "assoc=" in caplog.text


@pytest.mark.dcmtk
def test_logs_per_association(vault_server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "dicomvault.dimse")
    result = dcmtk("storescu", "-aec", "DICOMVAULT", "127.0.0.1", vault_server.port, CT)
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and "closed" not in caplog.text:
        time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if r.name == "dicomvault.dimse"]
    accepted = next(line for line in lines if " accepted " in line)
    assoc_id = accepted.split()[0]
    assert "calling=STORESCU" in accepted and "called=DICOMVAULT" in accepted
    assert any(
        line.startswith(assoc_id) and "C-STORE" in line and "status=0x0000" in line
        for line in lines
    )
    assert any(
        line.startswith(assoc_id) and "closed" in line and "duration=" in line for line in lines
    )


def test_echo_cli_and_store_cli(vault: Archive, vault_server: ServerThread, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dicomvault.cli.net_commands import echo_command, store_command

    config = tmp_path / "dicomvault.toml"
    config.write_text(
        "[remotes.vault]\n"
        f'ae_title = "DICOMVAULT"\nhost = "127.0.0.1"\nport = {vault_server.port}\n'
    )
    runner = CliRunner()
    echo = runner.invoke(echo_command, ["vault", "--config", str(config)])
    assert echo.exit_code == 0, echo.output
    assert "success" in echo.output
    wrong = runner.invoke(
        echo_command, [f"NOBODY@127.0.0.1:{vault_server.port}", "--config", str(config)]
    )
    assert wrong.exit_code == 1
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "ct.dcm").write_bytes(CT.read_bytes())
    (folder / "mr.dcm").write_bytes(MR.read_bytes())
    stored = runner.invoke(
        store_command,
        [
            str(folder),
            "--to",
            f"DICOMVAULT@127.0.0.1:{vault_server.port}",
            "--associations",
            "2",
            "--calling-ae",
            "CLITEST",
            "--config",
            str(config),
        ],
    )
    assert stored.exit_code == 0, stored.output
    assert "sent" in stored.output
    assert vault.get_instance(read_file_info(MR).sop_instance_uid).size > 0
    (folder / "junk.dcm").write_bytes(b"\x08\x00" + b"junk" * 10)
    failed = runner.invoke(store_command, [str(folder), "--to", "vault", "--config", str(config)])
    assert failed.exit_code == 1
    assert "junk.dcm" in failed.output
    report = runner.invoke(
        store_command, [str(folder), "--to", "vault", "--config", str(config), "--json"]
    )
    assert report.exit_code == 1
    parsed = json.loads(report.stdout)
    assert parsed["target"] == f"DICOMVAULT@127.0.0.1:{vault_server.port}"
    assert (parsed["sent"], parsed["warnings"], parsed["failed"]) == (2, 0, 1)
    by_name = {Path(f["path"]).name: f for f in parsed["files"]}
    assert by_name["ct.dcm"] == {
        "path": str(folder / "ct.dcm"),
        "outcome": "sent",
        "status": "0x0000",
        "reason": None,
    }
    assert by_name["junk.dcm"]["outcome"] == "failed" and by_name["junk.dcm"]["reason"]
