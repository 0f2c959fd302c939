"""Tests for ``bench.pagecache``: each receiver's same start."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

import pytest

from bench import pagecache


def test_drop_writes_the_page_cache_only_and_says_when_it_cannot(tmp_path: Path) -> None:
    control = tmp_path / "drop_caches"  # stands in for /proc/sys/vm/drop_caches
    control.write_text("")
    assert pagecache.drop_page_cache(control) is True
    assert control.read_text() == "1\n"  # 1: the page cache; 3 would drop inodes too
    assert pagecache.drop_page_cache(tmp_path / "no-such-dir" / "drop_caches") is False


def test_settle_reads_every_file_and_drops_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [tmp_path / "empty", tmp_path / "big"]
    files[0].write_bytes(b"")
    files[1].write_bytes(b"x" * (3 << 20))  # several reads of 1 MiB
    read: list[Path] = []
    real_open = Path.open

    def counting_open(self: Path, *args: Any, **kwargs: Any) -> IO[Any]:
        read.append(self)
        return real_open(self, *args, **kwargs)

    dropped: list[bool] = []
    monkeypatch.setattr(Path, "open", counting_open)
    monkeypatch.setattr(pagecache, "drop_page_cache", lambda: dropped.append(True) or True)
    assert pagecache.settle(files, drop=False) is False
    assert read == files and dropped == []
    assert pagecache.settle(files) is True
    assert dropped == [True]
    with pytest.raises(FileNotFoundError):  # a data set file gone is an error, not skipped
        pagecache.settle([tmp_path / "gone"], drop=False)
