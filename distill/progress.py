"""Progress bars: tqdm, all silenced by ``distill -q`` (it sets ``QUIET``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

QUIET = False  # set by the command line's -q/--quiet for the whole process


def progress_bar(iterable: Iterable | None = None, *, show: bool = True, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, hidden when ``show`` is false or the process is quiet."""
    return tqdm(iterable, disable=QUIET or not show, **kwargs)
