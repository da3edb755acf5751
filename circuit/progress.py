"""Progress bars for long work (rich), silenced with ``progress=False``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
console = Console(stderr=True)


def track(
    items: Iterable[T], total: int, description: str, enabled: bool = True, size: Callable[[T], int] = lambda _: 1
) -> Iterator[T]:
    """Yield ``items`` while drawing a bar that advances by ``size(item)`` per item (1 by default)."""
    if not enabled:
        yield from items
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task, size(item))
