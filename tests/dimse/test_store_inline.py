"""Where a C-STORE's data set is finished: small ones on the event loop, the rest on a
thread; the loop's instances go to the index writer in batches, and the writer's
results reach the loop with one wake-up per batch."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from peers import PYDICOM_TEST_FILES, ServerThread

from dicomvault.archive import Archive
from dicomvault.archive.archive import INLINE_LIMIT
from dicomvault.dicom.kos import KEY_OBJECT_SELECTION_DOCUMENT
from dicomvault.dimse.store import _Batches, _Completions
from dicomvault.model.errors import CannotParse
from dicomvault.model.records import StoreResult, StoreStatus
from dicomvault.net import associate, contexts_for_files, read_file_info
from tests.core.dicomfiles import dataset_bytes, make_dataset, write_part10

MR = PYDICOM_TEST_FILES / "MR_small.dcm"  # 9.8 KB data set


def _larger_than_inline_limit() -> Path:
    for path in sorted(PYDICOM_TEST_FILES.glob("*.dcm")):
        try:
            info = read_file_info(path)
        except Exception:
            continue
        explicit_le = info.transfer_syntax_uid == "1.2.840.10008.1.2.1"
        if explicit_le and INLINE_LIMIT < path.stat().st_size < 4 * INLINE_LIMIT:
            return path
    raise AssertionError("no pydicom test file between 64 KiB and 256 KiB")


def test_receives_inline_only_small_local_non_kos(vault: Archive, monkeypatch: Any) -> None:
    ct = "1.2.840.10008.5.1.4.1.1.2"
    assert vault.receives_inline(ct, 10_000)
    assert vault.receives_inline(ct, INLINE_LIMIT)
    assert not vault.receives_inline(ct, INLINE_LIMIT + 1)
    # A rejection note may hide instances in a write transaction of its own.
    assert not vault.receives_inline(KEY_OBJECT_SELECTION_DOCUMENT, 1_000)
    # storage.sync = "blob": placing a blob fsyncs it, never on the loop.
    monkeypatch.setattr(vault.store, "place_syncs", True)
    assert not vault.receives_inline(ct, 1_000)
    monkeypatch.setattr(vault.store, "place_syncs", False)
    # PostgreSQL: the duplicate probe is a network round trip, never on the loop.
    monkeypatch.setattr(vault.index, "is_sqlite", False)
    assert not vault.receives_inline(ct, 1_000)


def test_small_data_set_finished_on_the_loop_large_one_on_a_thread(
    vault: Archive, vault_server: ServerThread, monkeypatch: Any
) -> None:
    seen: dict[str, str] = {}

    def spy(name: str) -> None:
        original = getattr(Archive, name)

        def record(self: Archive, **kwargs: Any) -> object:
            seen[kwargs["sop_instance_uid"]] = threading.current_thread().name
            return original(self, **kwargs)

        monkeypatch.setattr(Archive, name, record)

    spy("prepare_buffered")
    big = _larger_than_inline_limit()
    small_info, big_info = read_file_info(MR), read_file_info(big)

    async def run() -> list[int]:
        async with associate(
            "127.0.0.1",
            vault_server.port,
            called_ae="DICOMVAULT",
            contexts=contexts_for_files([small_info, big_info]),
        ) as assoc:
            return [(await assoc.send_file(path)).status for path in (MR, big)]

    assert asyncio.run(run()) == [0, 0]
    assert seen[small_info.sop_instance_uid] == vault_server.thread.name
    assert seen[big_info.sop_instance_uid] != vault_server.thread.name
    for info in (small_info, big_info):
        assert vault.get_instance(info.sop_instance_uid).size > 0


def _result(uid: str) -> StoreResult:
    return StoreResult(
        status=StoreStatus.STORED,
        sop_class_uid="1.2.3",
        sop_instance_uid=uid,
        study_instance_uid="1.2.4",
        series_instance_uid="1.2.5",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size=1,
        warnings=(),
    )


def test_a_batch_of_results_wakes_the_loop_once() -> None:
    async def run() -> tuple[list[object], int]:
        loop = asyncio.get_running_loop()
        wakeups = 0
        original = loop.call_soon_threadsafe

        def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal wakeups
            wakeups += 1
            return original(callback, *args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        completions = _Completions(loop)
        indexed: list[Future[StoreResult]] = [Future() for _ in range(5)]
        waiters = [completions.watch(f) for f in indexed]
        waiters[3].cancel()  # an association aborted meanwhile: skipped, no error

        def writer_finishes_a_batch() -> None:
            for number, future in enumerate(indexed):
                if number == 2:
                    future.set_exception(CannotParse("bad"))
                else:
                    future.set_result(_result(f"1.2.{number}"))

        # The loop is blocked while the writer thread finishes the whole batch.
        thread = threading.Thread(target=writer_finishes_a_batch)
        thread.start()
        thread.join()
        outcomes = await asyncio.gather(*waiters, return_exceptions=True)
        return outcomes, wakeups

    outcomes, wakeups = asyncio.run(run())
    assert wakeups == 1
    assert [o.sop_instance_uid for o in outcomes if isinstance(o, StoreResult)] == [
        "1.2.0",
        "1.2.1",
        "1.2.4",
    ]
    assert isinstance(outcomes[2], CannotParse)
    assert isinstance(outcomes[3], asyncio.CancelledError)


def test_results_after_a_delivery_are_delivered_too() -> None:
    async def run() -> list[str]:
        loop = asyncio.get_running_loop()
        completions = _Completions(loop)
        got = []
        for number in range(3):  # one at a time: each needs its own wake-up
            future: Future[StoreResult] = Future()
            waiter = completions.watch(future)
            threading.Thread(target=future.set_result, args=(_result(f"1.3.{number}"),)).start()
            got.append((await asyncio.wait_for(waiter, 5)).sop_instance_uid)
        return got

    assert asyncio.run(run()) == ["1.3.0", "1.3.1", "1.3.2"]


def test_instances_gather_while_a_batch_is_written(vault: Archive, monkeypatch: Any) -> None:
    sizes: list[int] = []
    held: list[Any] = []
    real = vault.finalize_many

    def finalize_many(prepared: list[Any], done: Any) -> None:
        sizes.append(len(prepared))
        if len(sizes) == 1:  # the first batch's results are held back until released
            real(prepared, lambda results: held.append((done, results)))
        else:
            real(prepared, done)

    monkeypatch.setattr(vault, "finalize_many", finalize_many)

    def prepared(number: int) -> Any:
        ds = make_dataset()
        path = write_part10(ds, Path(vault.store.root).parent / f"{number}.dcm")
        return vault.prepare_buffered(
            sop_class_uid=ds.SOPClassUID,
            sop_instance_uid=ds.SOPInstanceUID,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            dataset=dataset_bytes(path),
        )

    async def run() -> list[object]:
        batches = _Batches(vault, asyncio.get_running_loop())
        first = batches.submit(prepared(0))
        while not held:  # the first batch is indexed; its results wait for us
            await asyncio.sleep(0.01)
        later = [batches.submit(prepared(n)) for n in (1, 2, 3)]
        later[1].cancel()  # its association went away: it is still stored
        assert sizes == [1]  # nothing more is handed over while a batch is written
        done, results = held[0]
        done(results)
        return await asyncio.gather(first, *later, return_exceptions=True)

    outcomes = asyncio.run(run())
    assert sizes == [1, 3]
    stored = [o for o in outcomes if isinstance(o, StoreResult)]
    assert [o.status for o in stored] == [StoreStatus.STORED] * 3
    assert isinstance(outcomes[2], asyncio.CancelledError)
    assert vault.stats().instances == 4
