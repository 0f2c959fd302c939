"""The upper layer state machine of PS3.8 9.2 as a table (PS3.8 Table 9-10).

States (PS3.8 Table 9-1), events (Table 9-2) and actions (Tables 9-6 to 9-9) are named
as in the standard. :data:`TRANSITION_TABLE` maps every (state, event) pair that has an
entry in Table 9-10 to its action; the empty cells of the table are absent and dispatching
one of them raises :class:`~dicomvault.net.errors.ProtocolStateError`.

The machine performs no I/O itself: each action is a method of an
:class:`ActionProvider` (the association protocol), and returns the next state when the
standard makes it conditional (AE-6, AR-8); otherwise the next state is the one in
:data:`ACTIONS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol

from dicomvault.net.errors import ProtocolStateError

#: PS3.8 Table 9-1.
STATES: Final[dict[str, str]] = {
    "Sta1": "Idle",
    "Sta2": "Transport connection open (Awaiting A-ASSOCIATE-RQ PDU)",
    "Sta3": "Awaiting local A-ASSOCIATE response primitive (from local user)",
    "Sta4": "Awaiting transport connection opening to complete (from local transport service)",
    "Sta5": "Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU",
    "Sta6": "Association established and ready for data transfer",
    "Sta7": "Awaiting A-RELEASE-RP PDU",
    "Sta8": "Awaiting local A-RELEASE response primitive (from local user)",
    "Sta9": "Release collision requestor side; awaiting A-RELEASE response (from local user)",
    "Sta10": "Release collision acceptor side; awaiting A-RELEASE-RP PDU",
    "Sta11": "Release collision requestor side; awaiting A-RELEASE-RP PDU",
    "Sta12": "Release collision acceptor side; awaiting A-RELEASE response primitive",
    "Sta13": "Awaiting Transport Connection Close Indication (Association no longer exists)",
}

#: PS3.8 Table 9-2.
EVENTS: Final[dict[str, str]] = {
    "Evt1": "A-ASSOCIATE Request (local user)",
    "Evt2": "Transport Connect Confirm (local transport service)",
    "Evt3": "A-ASSOCIATE-AC PDU (received on transport connection)",
    "Evt4": "A-ASSOCIATE-RJ PDU (received on transport connection)",
    "Evt5": "Transport Connection Indication (local transport service)",
    "Evt6": "A-ASSOCIATE-RQ PDU (received on transport connection)",
    "Evt7": "A-ASSOCIATE response primitive (accept)",
    "Evt8": "A-ASSOCIATE response primitive (reject)",
    "Evt9": "P-DATA request primitive",
    "Evt10": "P-DATA-TF PDU (received on transport connection)",
    "Evt11": "A-RELEASE Request primitive",
    "Evt12": "A-RELEASE-RQ PDU (received on transport connection)",
    "Evt13": "A-RELEASE-RP PDU (received on transport connection)",
    "Evt14": "A-RELEASE Response primitive",
    "Evt15": "A-ABORT Request primitive",
    "Evt16": "A-ABORT PDU (received on transport connection)",
    "Evt17": "Transport connection closed indication (local transport service)",
    "Evt18": "ARTIM timer expired (Association reject/release timer)",
    "Evt19": "Unrecognized or invalid PDU received",
}

#: PS3.8 Tables 9-6 to 9-9: action -> (description, next state; "" when conditional).
ACTIONS: Final[dict[str, tuple[str, str]]] = {
    "AE-1": ("Issue TRANSPORT CONNECT request primitive to local transport service", "Sta4"),
    "AE-2": ("Send A-ASSOCIATE-RQ-PDU", "Sta5"),
    "AE-3": ("Issue A-ASSOCIATE confirmation (accept) primitive", "Sta6"),
    "AE-4": ("Issue A-ASSOCIATE confirmation (reject) primitive and close transport", "Sta1"),
    "AE-5": ("Issue Transport connection response primitive; start ARTIM timer", "Sta2"),
    "AE-6": ("Stop ARTIM timer; issue A-ASSOCIATE indication or send A-ASSOCIATE-RJ", ""),
    "AE-7": ("Send A-ASSOCIATE-AC PDU", "Sta6"),
    "AE-8": ("Send A-ASSOCIATE-RJ PDU and start ARTIM timer", "Sta13"),
    "DT-1": ("Send P-DATA-TF PDU", "Sta6"),
    "DT-2": ("Send P-DATA indication primitive", "Sta6"),
    "AR-1": ("Send A-RELEASE-RQ PDU", "Sta7"),
    "AR-2": ("Issue A-RELEASE indication primitive", "Sta8"),
    "AR-3": ("Issue A-RELEASE confirmation primitive, and close transport connection", "Sta1"),
    "AR-4": ("Issue A-RELEASE-RP PDU and start ARTIM timer", "Sta13"),
    "AR-5": ("Stop ARTIM timer", "Sta1"),
    "AR-6": ("Issue P-DATA indication", "Sta7"),
    "AR-7": ("Issue P-DATA-TF PDU", "Sta8"),
    "AR-8": ("Issue A-RELEASE indication (release collision)", ""),
    "AR-9": ("Send A-RELEASE-RP PDU", "Sta11"),
    "AR-10": ("Issue A-RELEASE confirmation primitive", "Sta12"),
    "AA-1": ("Send A-ABORT PDU (service-user source) and start (or restart) ARTIM", "Sta13"),
    "AA-2": ("Stop ARTIM timer if running. Close transport connection", "Sta1"),
    "AA-3": ("Issue A-ABORT or A-P-ABORT indication and close transport connection", "Sta1"),
    "AA-4": ("Issue A-P-ABORT indication primitive", "Sta1"),
    "AA-5": ("Stop ARTIM timer", "Sta1"),
    "AA-6": ("Ignore PDU", "Sta13"),
    "AA-7": ("Send A-ABORT PDU", "Sta13"),
    "AA-8": ("Send A-ABORT PDU (service-provider source), issue A-P-ABORT, start ARTIM", "Sta13"),
}


def _r(event: str, cells: str) -> dict[tuple[str, str], str]:
    """One row of Table 9-10: ``cells`` lists the action for Sta1..Sta13, "-" when empty."""
    out: dict[tuple[str, str], str] = {}
    for index, action in enumerate(cells.split(), start=1):
        if action != "-":
            out[(f"Sta{index}", event)] = action
    return out


# PS3.8 Table 9-10, transcribed row by row; columns are Sta1 .. Sta13.
# fmt: off
TRANSITION_TABLE: Final[dict[tuple[str, str], str]] = {
    #                Sta1  Sta2  Sta3  Sta4  Sta5  Sta6  Sta7  Sta8  Sta9  Sta10 Sta11 Sta12 Sta13
    **_r("Evt1",  "AE-1  -     -     -     -     -     -     -     -     -     -     -     -"),
    **_r("Evt2",  "-     -     -     AE-2  -     -     -     -     -     -     -     -     -"),
    **_r("Evt3",  "-     AA-1  AA-8  -     AE-3  AA-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-6"),
    **_r("Evt4",  "-     AA-1  AA-8  -     AE-4  AA-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-6"),
    **_r("Evt5",  "AE-5  -     -     -     -     -     -     -     -     -     -     -     -"),
    **_r("Evt6",  "-     AE-6  AA-8  -     AA-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-7"),
    **_r("Evt7",  "-     -     AE-7  -     -     -     -     -     -     -     -     -     -"),
    **_r("Evt8",  "-     -     AE-8  -     -     -     -     -     -     -     -     -     -"),
    **_r("Evt9",  "-     -     -     -     -     DT-1  -     AR-7  -     -     -     -     -"),
    **_r("Evt10", "-     AA-1  AA-8  -     AA-8  DT-2  AR-6  AA-8  AA-8  AA-8  AA-8  AA-8  AA-6"),
    **_r("Evt11", "-     -     -     -     -     AR-1  -     -     -     -     -     -     -"),
    **_r("Evt12", "-     AA-1  AA-8  -     AA-8  AR-2  AR-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-6"),
    **_r("Evt13", "-     AA-1  AA-8  -     AA-8  AA-8  AR-3  AA-8  AA-8  AR-10 AR-3  AA-8  AA-6"),
    **_r("Evt14", "-     -     -     -     -     -     -     AR-4  AR-9  -     -     AR-4  -"),
    **_r("Evt15", "-     -     AA-1  AA-2  AA-1  AA-1  AA-1  AA-1  AA-1  AA-1  AA-1  AA-1  -"),
    **_r("Evt16", "-     AA-2  AA-3  -     AA-3  AA-3  AA-3  AA-3  AA-3  AA-3  AA-3  AA-3  AA-2"),
    **_r("Evt17", "-     AA-5  AA-4  AA-4  AA-4  AA-4  AA-4  AA-4  AA-4  AA-4  AA-4  AA-4  AR-5"),
    **_r("Evt18", "-     AA-2  -     -     -     -     -     -     -     -     -     -     AA-2"),
    **_r("Evt19", "-     AA-1  AA-8  -     AA-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-7"),
}
# fmt: on


class ActionProvider(Protocol):
    """What performs the actions: one method per action, named ``AE_1`` ... ``AA_8``.

    Each receives the event's argument (a PDU, bytes to send, an error, or ``None``) and
    returns the next state, or ``None`` to take the state given in :data:`ACTIONS`.
    """

    def __getattr__(self, name: str) -> Callable[[Any], str | None]: ...


def _method_name(action: str) -> str:
    return action.replace("-", "_")


class StateMachine:
    """The PS3.8 9.2 machine of one association.

    Parameters
    ----------
    provider
        The object whose ``AE_1`` ... ``AA_8`` methods perform the actions.
    """

    __slots__ = ("_bound", "state")

    def __init__(self, provider: object) -> None:
        self.state = "Sta1"
        # Resolve every action once: dispatch is then two dict lookups and a call.
        self._bound: dict[tuple[str, str], tuple[str, Callable[[Any], str | None], str]] = {
            key: (action, getattr(provider, _method_name(action)), ACTIONS[action][1])
            for key, action in TRANSITION_TABLE.items()
        }

    def dispatch(self, event: str, arg: Any = None) -> str:
        """Run the action Table 9-10 gives for ``event`` in the current state.

        Returns
        -------
        str
            The name of the action performed (e.g. ``"DT-2"``).

        Raises
        ------
        ProtocolStateError
            The table has no entry for this (state, event) pair.
        """
        entry = self._bound.get((self.state, event))
        if entry is None:
            raise ProtocolStateError(f"{event} ({EVENTS[event]}) is not valid in {self.state}")
        action, method, next_state = entry
        result = method(arg)
        self.state = result or next_state
        return action
