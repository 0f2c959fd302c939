"""SQL matching against a brute-force oracle (PS3.4 C.2.2.2), both backends.

One random corpus per backend (stored through the archive, real files); hypothesis then
draws keys — often derived from stored values so they hit — and the archive's answer must
equal a naive Python evaluation over the corpus. Bounded: ``max_examples`` per key kind.
"""

from __future__ import annotations

import random
from datetime import date
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicomvault.archive import Archive
from tests.query.corpus import Spec, query, store

# Letters that stress escaping and folding: SQL wild cards, our LIKE escape, GLOB's
# bracket, PN delimiters, non-ASCII with case (é/É, ü/Ü, σ/Σ, ж/Ж) and without (山).
ALPHABET = "aAbBzZ%_![]\u00e9\u00c9\u00fc\u00dc\u03c3\u03a3\u0436\u0416\u5c71 "
COMPONENT = "aAbB%_!\u00e9\u00dc\u03a3\u0436\u5c71"
FAST = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _word(rng: random.Random, letters: str, low: int = 1, high: int = 5) -> str:
    return "".join(rng.choice(letters) for _ in range(rng.randint(low, high)))


def _name(rng: random.Random) -> str:
    alphabetic = "^".join(_word(rng, COMPONENT) for _ in range(rng.randint(1, 3)))
    if rng.random() < 0.3:
        return f"{alphabetic}={_word(rng, COMPONENT)}^{_word(rng, COMPONENT)}"
    return alphabetic


def _corpus(seed: int = 20240601) -> list[Spec]:
    rng = random.Random(seed)
    specs = []
    # The index keeps one name per patient (the first stored): one name per Patient ID.
    names = [_name(rng) for _ in range(12)]
    for index in range(36):
        date = f"2024{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        time = rng.choice(
            [
                "",
                f"{rng.randint(0, 23):02d}{rng.randint(0, 59):02d}",
                f"{rng.randint(0, 23):02d}{rng.randint(0, 59):02d}"
                f"{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}",
            ]
        )
        accession = rng.choice(["", _word(rng, ALPHABET.replace(" ", ""), 1, 6)])
        specs.append(
            Spec(
                f"P{index % 12}",
                names[index % 12],
                date,
                time,
                accession,
                series=[(rng.choice(["CT", "MR", "SR"]), 1)],
                charset="ISO_IR 192",
            )
        )
    return specs


# -- the oracle: deliberately naive, written independently of dicomvault.model.matching --


def _fold(text: str) -> str:
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def _glob(pattern: str, text: str) -> bool:
    """Recursive * / ? matcher (no regex, no SQL)."""
    if not pattern:
        return not text
    head = pattern[0]
    if head == "*":
        return any(_glob(pattern[1:], text[i:]) for i in range(len(text) + 1))
    if not text:
        return False
    if head == "?" or head == text[0]:
        return _glob(pattern[1:], text[1:])
    return False


def _oracle_text(key: str, stored: str) -> bool:
    # PS3.4 C.2.2.2.4: "*" is Universal Matching (also for absent values); a key with
    # several values matches when any does.
    if key == "" or any(v.strip("*") == "" for v in key.split("\\")):
        return True
    if key == '""':
        return stored == ""
    return any(stored != "" and _glob(v, stored) for v in key.split("\\"))


def _oracle_name(key: str, stored: str, fold: bool = True) -> bool:
    if key == "" or all(part.strip("*") == "" for part in key.split("\\")):
        return True
    for value in key.split("\\"):
        groups = stored.split("=") if stored else []
        ok = bool(stored)
        for index, wanted in enumerate(value.split("=")[:3]):
            if wanted in ("", "*"):
                continue
            have = groups[index] if index < len(groups) else ""
            ok = ok and (_glob(_fold(wanted), _fold(have)) if fold else _glob(wanted, have))
        if ok:
            return True
    return False


def _tm(value: str, high: bool) -> str:
    hhmmss, _, fraction = value.partition(".")
    full = hhmmss + ("235959" if high else "000000")[len(hhmmss) :]
    return full + "." + (fraction + ("9" if high else "0") * 6)[:6]


def _oracle_range(key: str, stored: str, vr: str) -> bool:
    if not stored:
        return False
    low, _, high = key.partition("-")
    have = _tm(stored, False) if vr == "TM" else stored
    if vr == "TM":
        low = _tm(low, False) if low else ""
        high = _tm(high, True) if high else ""
    return (not low or have >= low) and (not high or have <= high)


@pytest.fixture
def corpus(archive: Archive, tmp_path: Path) -> list[Spec]:
    specs = _corpus()
    store(archive, tmp_path / "in", specs)
    return specs


def _found(archive: Archive, **keys: str) -> list[str]:
    return sorted(str(m.values[0x0020000D]) for m in archive.find(query("STUDY", **keys)))


def _mutate(draw: st.DrawFn, text: str) -> str:
    """A pattern from a stored value: case changed, characters → ?, tails → *."""
    out = []
    for char in text:
        roll = draw(st.integers(0, 9))
        if roll == 0:
            out.append("?")
        elif roll == 1:
            out.append(char.swapcase())
        elif roll == 2:
            out.append("*")
            break
        else:
            out.append(char)
    return "".join(out)


@st.composite
def name_keys(draw: st.DrawFn, names: list[str]) -> str:
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.text(alphabet=COMPONENT + "*?^=\\", max_size=8))
    base = draw(st.sampled_from(names))
    key = _mutate(draw, base)
    if choice == 2:
        key = key.split("=")[0]
    if choice == 3:
        key = "*=" + _mutate(draw, base.split("=")[1] if "=" in base else base)
    return key


@st.composite
def text_keys(draw: st.DrawFn, values: list[str]) -> str:
    if draw(st.booleans()):
        return draw(st.sampled_from(['""', "*", *values]))
    base = draw(st.sampled_from([*values, "x"]))
    return _mutate(draw, base) + draw(st.sampled_from(["", "\\" + base, "\\%"]))


def test_person_name_matching(archive: Archive, corpus: list[Spec]) -> None:
    @FAST
    @given(name_keys([s.name for s in corpus]))
    def check(key: str) -> None:
        expected = sorted(s.uid for s in corpus if _oracle_name(key, s.name))
        assert _found(archive, PatientName=key) == expected, key

    check()


def test_person_name_matching_case_sensitive(archive: Archive, corpus: list[Spec]) -> None:
    archive.settings.query.case_insensitive_names = False

    @FAST
    @given(name_keys([s.name for s in corpus]))
    def check(key: str) -> None:
        expected = sorted(s.uid for s in corpus if _oracle_name(key, s.name, fold=False))
        assert _found(archive, PatientName=key) == expected, key

    check()


def test_text_matching(archive: Archive, corpus: list[Spec]) -> None:
    @FAST
    @given(text_keys([s.accession for s in corpus if s.accession]))
    def check(key: str) -> None:
        expected = sorted(s.uid for s in corpus if _oracle_text(key, s.accession))
        assert _found(archive, AccessionNumber=key) == expected, key

    check()


def test_range_matching(archive: Archive, corpus: list[Spec]) -> None:
    dates = st.dates(min_value=date(1900, 1, 1), max_value=date(2099, 12, 31)).map(
        lambda d: d.strftime("%Y%m%d")
    )
    times = st.from_regex(r"[01][0-9]([0-5][0-9]([0-5][0-9](\.[0-9]{1,6})?)?)?", fullmatch=True)

    @FAST
    @given(
        st.one_of(st.tuples(st.just("DA"), dates, dates), st.tuples(st.just("TM"), times, times)),
        st.integers(0, 2),
    )
    def check(bounds: tuple[str, str, str], shape: int) -> None:
        vr, low, high = bounds
        if vr == "DA":
            low, high = min(low, high), max(low, high)
        elif _tm(low, False) > _tm(high, True):
            low, high = high, low
        key = [f"{low}-{high}", f"{low}-", f"-{high}"][shape]
        if vr == "TM" and shape == 0 and _tm(low, False) > _tm(high, True):
            return
        keyword = "StudyDate" if vr == "DA" else "StudyTime"
        stored = {s.uid: (s.study_date if vr == "DA" else s.study_time) for s in corpus}
        expected = sorted(uid for uid, v in stored.items() if _oracle_range(key, v, vr))
        assert _found(archive, **{keyword: key}) == expected, key

    check()


def test_uid_list_matching(archive: Archive, corpus: list[Spec]) -> None:
    @FAST
    @given(
        st.lists(
            st.sampled_from([s.uid for s in corpus] + ["1.2.3", "1.2.34"]), min_size=1, max_size=5
        )
    )
    def check(chosen: list[str]) -> None:
        expected = sorted(s.uid for s in corpus if s.uid in chosen)
        assert _found(archive, StudyInstanceUID="\\".join(chosen)) == expected

    check()
