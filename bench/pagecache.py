"""Every receiver starts from the same page cache: written pages dropped, inputs read in.

On this project's machines (KVM guests) memory the guest has never touched is backed
by the host only when first written. A file write that needs a new page-cache page
then pays the host's fault too, and that cost is charged to the writing process as
kernel time. Measured here with :func:`bench.disk_floor.durable_write_floor` (1,000
CT files of 0.5 MB, 4 writers, each file ``fdatasync``'d), four runs in a row:

- page cache left to grow (into untouched memory): 0.5 GB more cache per run, 1.26–1.47
  ms of CPU per file, 905–1,044 files/s;
- the clean page cache dropped before each run (its pages, touched before, are reused):
  0.60–0.66 ms per file, 1,454–1,628 files/s.

A receiver's CPU per CT instance thus depended on how much of the guest's memory the
runs before it had used, not on the receiver. :func:`settle` gives each one the same
start: ``sync``, drop the clean page cache (``/proc/sys/vm/drop_caches``, root only),
then read the data set's files back in so that the senders do not read from the disk.
It only helps where the writes are synced: dirty pages are not dropped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def drop_page_cache(control: Path = DROP_CACHES) -> bool:
    """Write back everything and drop the clean page cache; ``False`` where this
    process may not (not root, or not Linux)."""
    os.sync()
    try:
        with control.open("w") as fp:
            fp.write("1\n")  # the page cache only; dentries and inodes stay
    except OSError:
        return False
    return True


def warm(paths: Sequence[Path]) -> None:
    """Read every file once so that no receiver pays for cold sender reads."""
    for path in paths:
        with path.open("rb") as fp:
            while fp.read(1 << 20):
                pass


def settle(paths: Sequence[Path], *, drop: bool = True) -> bool:
    """The same start for the next receiver: the page cache dropped (when ``drop``
    and permitted), then ``paths`` read in. Whether the cache was dropped."""
    dropped = drop_page_cache() if drop else False
    warm(paths)
    return dropped
