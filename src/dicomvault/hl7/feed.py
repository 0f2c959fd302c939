"""The HL7 order feed: ORM^O01 over MLLP → Modality Worklist items (issue 6, part 2).

:class:`OrderFeed` answers one message: parse and check it (:mod:`dicomvault.hl7.orm`),
map every order group, then apply the changes through an *applier* — in the server
:func:`worklist_applier`, which calls :mod:`dicomvault.archive.worklist` — and build the
acknowledgement: AA when everything was applied, AE/AR with MSA-3 and ERR saying why when
nothing was (HL7 v2.5.1 2.9.2, original-mode acknowledgement: every message is
answered). :func:`serve_hl7` is the listener ``dicomvault serve`` runs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence

from dicomvault.archive import Archive, audit, worklist
from dicomvault.config import Settings
from dicomvault.hl7.message import (
    APPLICATION_INTERNAL_ERROR,
    UNKNOWN_KEY_IDENTIFIER,
    Header,
    Hl7Error,
    Location,
    build_ack,
    guess_header,
)
from dicomvault.hl7.mllp import MllpServer, Reply
from dicomvault.hl7.orm import Order, map_orders, parse_orm
from dicomvault.model.errors import ConfigError, DicomVaultError, NotFound
from dicomvault.security.audit import ActionCode

log = logging.getLogger("dicomvault.hl7")

#: Applies a message's orders (all or none) and says what it did, one line; raises
#: :class:`~dicomvault.hl7.orm.Hl7Error` (or a ``DicomVaultError``) to refuse them.
Applier = Callable[[Sequence[Order]], str]


def _control_id() -> str:
    # MSH-10 of our ACK: unique, and within the 20 characters HL7 v2.3.1 allows.
    return uuid.uuid4().hex[:20]


class OrderFeed:
    """Answers ORM^O01 messages; every message gets exactly one acknowledgement.

    Parameters
    ----------
    apply
        Applies the orders of one message (runs in a worker thread: it may block on the
        database). Messages are applied one at a time, in arrival order, whatever
        connection they came on, so an update never overtakes the order it changes.
    station_ae_titles
        Modality → Scheduled Station AE Title (setting ``worklist.hl7_station_ae_titles``).
    """

    def __init__(self, apply: Applier, station_ae_titles: Mapping[str, str]) -> None:
        self.apply = apply
        self.station_ae_titles = dict(station_ae_titles)
        self._lock = asyncio.Lock()

    def _nack(self, header: Header, error: Hl7Error) -> Reply:
        return Reply(
            build_ack(header, error.ack_code, error=error, control_id=_control_id()),
            header.control_id,
            f"{error.ack_code} {error}",
            accepted=False,
        )

    async def handle(self, data: bytes) -> Reply:
        """One message → its ACK (never raises: an unexpected failure is an AE 207)."""
        header = guess_header(data)
        try:
            parsed = parse_orm(data)
            header = parsed.header
            orders = map_orders(parsed, self.station_ae_titles)
            async with self._lock:
                done = await asyncio.to_thread(self.apply, orders)
        except Hl7Error as exc:
            return self._nack(header, exc)
        except DicomVaultError as exc:
            # The worklist refused the item (WorklistError, …): the message is well
            # formed but cannot be applied — application error, with the archive's reason.
            return self._nack(header, Hl7Error(f"worklist: {exc}", code=_code_of(exc)))
        except Exception:
            log.exception("HL7 message %s: internal error", header.control_id or "(no MSH-10)")
            return self._nack(
                header,
                Hl7Error(
                    "internal error in the archive; the message was not applied",
                    code=APPLICATION_INTERNAL_ERROR,
                ),
            )
        ack = build_ack(header, "AA", text=done, control_id=_control_id())
        return Reply(ack, header.control_id, f"AA {done}")

    def reject_oversize(self, head: bytes, limit: int) -> Reply:
        """The AR for a message longer than ``limit`` bytes (its first bytes in ``head``)."""
        header = guess_header(head)
        return self._nack(
            header,
            Hl7Error(
                f"message larger than {limit} bytes (setting worklist.hl7_max_message_bytes)",
                ack_code="AR",
                code=APPLICATION_INTERNAL_ERROR,
            ),
        )


def _code_of(exc: BaseException) -> int:
    # Table 0357: an item that is not there is an unknown key; anything else the
    # worklist refuses is an application error.
    return UNKNOWN_KEY_IDENTIFIER if isinstance(exc, NotFound) else APPLICATION_INTERNAL_ERROR


# --------------------------------------------------------------------------- worklist


def worklist_applier(archive: Archive) -> Applier:
    """The applier that changes the archive's Modality Worklist (archive/worklist.py).

    Per order group (IHE RAD-4 / RAD-13, ORC-1), the items concerned are those with the
    order's accession number and, when OBR-19 was sent, its requested procedure id:

    - ``NW`` adds an item; when an open item (SCHEDULED / IN PROGRESS) with the same keys
      exists — a RIS re-sending an order whose ACK it did not get — that item is updated
      instead, so a re-sent message never makes a duplicate.
    - ``XO``/``XX``/``SC`` replace the open items' content; none → AE 204 (unknown key);
      only completed or discontinued ones → AE (they cannot change).
    - ``CA``/``OC``/``DC``/``OD`` cancel the open items; a repeated cancel (only cancelled
      items) is acknowledged; only completed / discontinued ones → AE; none → AE 204.

    Nothing half-applied: every order is mapped and value-checked
    (:func:`~dicomvault.hl7.orm.map_orders`) and every item it names looked up and its
    status checked before the first change. Should the worklist still refuse a change
    after earlier ones of the same message were made (the database failing between two
    calls), those are undone — updated items get their previous content back, added
    items are cancelled — before the NACK.
    """

    def concerned(order: Order) -> list[worklist.WorklistItem]:
        found = worklist.list_items(archive, accession_number=order.accession_number)
        if order.requested_procedure_id:
            found = [
                item
                for item in found
                if item.requested_procedure_id in (None, "", order.requested_procedure_id)
            ]
        return found

    def plan(orders: Sequence[Order]) -> list[tuple[str, Order, worklist.WorklistItem | None]]:
        steps: list[tuple[str, Order, worklist.WorklistItem | None]] = []
        for order in orders:
            found = concerned(order)
            live = [item for item in found if item.status in worklist.OPEN]
            closed = [
                item for item in found if item.status in (worklist.COMPLETED, worklist.DISCONTINUED)
            ]
            if order.action == "add":
                if live:
                    steps += [("update", order, item) for item in live]
                else:
                    steps.append(("add", order, None))
            elif live:
                steps += [(order.action, order, item) for item in live]
            elif closed:
                raise Hl7Error(
                    f"ORC-1 {order.control}: the worklist item of accession number"
                    f" {order.accession_number!r} is {closed[0].status} and cannot change",
                    code=APPLICATION_INTERNAL_ERROR,
                    location=Location("ORC", 1),
                )
            elif not found or order.action == "update":
                raise _unknown(order, cancelled=bool(found))
        return steps

    def apply(orders: Sequence[Order]) -> str:
        steps = plan(orders)
        undo: list[Callable[[], object]] = []
        done: list[str] = []
        changed: list[tuple[ActionCode, str, worklist.WorklistItem]] = []
        try:
            for action, order, item in steps:
                if action == "add":
                    added = worklist.add_item(archive, order.item)
                    changed.append(("C", order.control, added))
                    undo.append(functools.partial(worklist.cancel_item, archive, added.id))
                    done.append(f"{order.control} {order.accession_number}: add {added.id}")
                elif action == "update":
                    assert item is not None
                    updated = worklist.update_item(archive, item.id, order.item)
                    changed.append(("U", order.control, updated))
                    undo.append(
                        functools.partial(worklist.update_item, archive, item.id, item.dataset)
                    )
                    done.append(f"{order.control} {order.accession_number}: update {item.id}")
                else:
                    assert item is not None
                    changed.append(("U", order.control, worklist.cancel_item(archive, item.id)))
                    done.append(f"{order.control} {order.accession_number}: cancel {item.id}")
        except Exception:
            for revert in reversed(undo):
                try:
                    revert()
                except Exception:
                    log.exception("HL7: undoing a partly applied message failed")
            raise
        for code, control, changed_item in changed:  # Procedure Record, PS3.15 A.5.3.15
            audit.procedure_record(
                archive, action=code, user="HL7", host=None, patient_id=changed_item.patient_id,
                study_uid=changed_item.study_instance_uid,
                accession=changed_item.accession_number,
                description=f"HL7 ORC-1 {control}: worklist item {changed_item.id}"
                f" {changed_item.status}",
            )  # fmt: skip
        return "; ".join(done) or "nothing to change (already cancelled)"

    return apply


def _unknown(order: Order, *, cancelled: bool = False) -> Hl7Error:
    keys = f"accession number {order.accession_number!r}"
    if order.requested_procedure_id:
        keys += f" and requested procedure id {order.requested_procedure_id!r}"
    what = "only a cancelled worklist item" if cancelled else "no worklist item"
    return Hl7Error(
        f"ORC-1 {order.control}: {what} with {keys} (OBR-18/OBR-19)",
        code=UNKNOWN_KEY_IDENTIFIER,
        location=Location("OBR", 18),
    )


# --------------------------------------------------------------------------- server


async def serve_hl7(
    archive: Archive,
    settings: Settings,
    stop: asyncio.Event,
    *,
    ready: Callable[[tuple[str, int]], None] | None = None,
    sock: socket.socket | None = None,
    apply: Applier | None = None,
) -> None:
    """Listen for HL7 orders on ``worklist.hl7_host:hl7_port`` (or ``sock``) until ``stop``.

    Raises
    ------
    ConfigError
        The port cannot be bound (``serve`` then exits with the message: a feed that does
        not listen must not go unnoticed).
    """
    conf = settings.worklist
    feed = OrderFeed(apply or worklist_applier(archive), conf.hl7_station_ae_titles)
    limit = conf.hl7_max_message_bytes
    server = MllpServer(
        feed.handle,
        lambda head: feed.reject_oversize(head, limit),
        max_message_bytes=limit,
        idle_timeout=conf.hl7_idle_timeout,
    )
    try:
        address = await server.start(conf.hl7_host, conf.hl7_port, sock=sock)
    except OSError as exc:
        raise ConfigError(
            f"worklist.hl7_port: cannot listen on {conf.hl7_host}:{conf.hl7_port}"
            f" for the HL7 order feed: {exc.strerror or exc}"
        ) from exc
    log.info("HL7 order feed (MLLP) listening on %s:%d", *address)
    if ready is not None:
        ready(address)
    await server.serve_until(stop)
