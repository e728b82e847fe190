"""The CLI's rich consoles, made on first use.

Why: importing rich costs ~20 ms, and ``casefile collect`` pays every millisecond before
it starts collecting; it prints only at the end, by which time the sampling windows have
had the time to spare.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["lazy_console", "load_console"]


class _LazyConsole:
    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._made(), name)

    def _made(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console


def lazy_console(**options: Any) -> Console:
    """A stand-in for ``rich.console.Console(**options)`` that imports rich on first use."""
    return cast("Console", _LazyConsole(**options))


def load_console(console: Console) -> None:
    """Make a lazy console now (imports rich), e.g. while a collection's windows run."""
    if isinstance(console, _LazyConsole):
        console._made()
