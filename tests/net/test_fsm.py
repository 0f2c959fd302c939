"""Every (state, event) pair of PS3.8 Table 9-10 against the transcribed table."""

from __future__ import annotations

from typing import Any

import pytest

from dicomvault.net.errors import ProtocolStateError
from dicomvault.net.fsm import ACTIONS, EVENTS, STATES, TRANSITION_TABLE, StateMachine

# Independent spot checks straight from the standard's table (not from our transcription).
KNOWN = {
    ("Sta1", "Evt1"): "AE-1",
    ("Sta1", "Evt5"): "AE-5",
    ("Sta2", "Evt6"): "AE-6",
    ("Sta2", "Evt18"): "AA-2",
    ("Sta3", "Evt7"): "AE-7",
    ("Sta3", "Evt8"): "AE-8",
    ("Sta4", "Evt2"): "AE-2",
    ("Sta4", "Evt15"): "AA-2",
    ("Sta5", "Evt3"): "AE-3",
    ("Sta5", "Evt4"): "AE-4",
    ("Sta6", "Evt9"): "DT-1",
    ("Sta6", "Evt10"): "DT-2",
    ("Sta6", "Evt11"): "AR-1",
    ("Sta6", "Evt12"): "AR-2",
    ("Sta7", "Evt10"): "AR-6",
    ("Sta7", "Evt12"): "AR-8",
    ("Sta7", "Evt13"): "AR-3",
    ("Sta8", "Evt9"): "AR-7",
    ("Sta8", "Evt14"): "AR-4",
    ("Sta9", "Evt14"): "AR-9",
    ("Sta10", "Evt13"): "AR-10",
    ("Sta11", "Evt13"): "AR-3",
    ("Sta12", "Evt14"): "AR-4",
    ("Sta13", "Evt6"): "AA-7",
    ("Sta13", "Evt10"): "AA-6",
    ("Sta13", "Evt17"): "AR-5",
    ("Sta13", "Evt18"): "AA-2",
    ("Sta13", "Evt19"): "AA-7",
    ("Sta2", "Evt17"): "AA-5",
    ("Sta6", "Evt16"): "AA-3",
    ("Sta6", "Evt17"): "AA-4",
    ("Sta6", "Evt19"): "AA-8",
}


class Recorder:
    """An action provider that records what it was asked to do."""

    def __init__(self, requestor: bool = False) -> None:
        self.requestor = requestor
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name[:3] not in ("AE_", "DT_", "AR_", "AA_"):
            raise AttributeError(name)

        def action(arg: Any) -> str | None:
            self.calls.append(name)
            if name == "AE_6":
                return "Sta13" if arg == "unacceptable" else "Sta3"
            if name == "AR_8":
                return "Sta9" if self.requestor else "Sta10"
            return None

        return action


ALL_PAIRS = [(state, event) for state in STATES for event in EVENTS]


def test_table_shape() -> None:
    assert len(STATES) == 13 and len(EVENTS) == 19
    assert set(TRANSITION_TABLE.values()) <= set(ACTIONS)
    assert set(ACTIONS) == set(TRANSITION_TABLE.values())  # every action is used
    for key, action in KNOWN.items():
        assert TRANSITION_TABLE[key] == action, key


@pytest.mark.parametrize(("state", "event"), ALL_PAIRS, ids=[f"{s}-{e}" for s, e in ALL_PAIRS])
def test_every_state_event_pair(state: str, event: str) -> None:
    recorder = Recorder()
    fsm = StateMachine(recorder)
    fsm.state = state
    action = TRANSITION_TABLE.get((state, event))
    if action is None:
        with pytest.raises(ProtocolStateError):
            fsm.dispatch(event)
        assert fsm.state == state and recorder.calls == []
        return
    assert fsm.dispatch(event) == action
    assert recorder.calls == [action.replace("-", "_")]
    expected = ACTIONS[action][1]
    if action == "AE-6":
        expected = "Sta3"
    elif action == "AR-8":
        expected = "Sta10"
    assert fsm.state == expected


def test_conditional_actions() -> None:
    fsm = StateMachine(Recorder())
    fsm.state = "Sta2"
    fsm.dispatch("Evt6", "unacceptable")
    assert fsm.state == "Sta13"
    requestor = StateMachine(Recorder(requestor=True))
    requestor.state = "Sta7"
    requestor.dispatch("Evt12")
    assert requestor.state == "Sta9"


def test_requestor_happy_path() -> None:
    recorder = Recorder(requestor=True)
    fsm = StateMachine(recorder)
    for event in ("Evt1", "Evt2", "Evt3", "Evt9", "Evt10", "Evt11", "Evt13"):
        fsm.dispatch(event)
    assert fsm.state == "Sta1"
    assert recorder.calls == ["AE_1", "AE_2", "AE_3", "DT_1", "DT_2", "AR_1", "AR_3"]


def test_acceptor_release_collision() -> None:
    recorder = Recorder()
    fsm = StateMachine(recorder)
    fsm.state = "Sta7"  # we asked for release, the peer asks too
    for event in ("Evt12", "Evt13", "Evt14", "Evt17"):
        fsm.dispatch(event)
    assert recorder.calls == ["AR_8", "AR_10", "AR_4", "AR_5"]
    assert fsm.state == "Sta1"
