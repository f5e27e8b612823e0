"""What the stores or the controller refuse (an unknown job, adapter or schedule; a job in the
wrong state) is one ✗ line and exit 2; an unreachable controller is one line and exit 1."""

from __future__ import annotations

from typing import Any, Callable

from rich.markup import escape

from orchestrator.cli.output import error_text, fail, note
from orchestrator.exitcodes import ExitCode


def exit_code_of(action: Callable[[], int | None]) -> int:
    """Run `action`: its own exit code, OK when it returns None, INVALID when a store refuses it."""
    from orchestrator.store.jobs import StaleUpdate
    from orchestrator.store.registry import RegistryError
    from orchestrator.store.schedules import ScheduleError

    try:
        result = action()
    except (KeyError, ValueError, StaleUpdate, RegistryError, ScheduleError) as err:
        return fail(escape(error_text(err)), ExitCode.INVALID)
    return ExitCode.OK if result is None else result


def with_controller(address: str | None, action: Callable[[Any], int | None], start: bool = True) -> int:
    """Run `action` with a controller client (starting the controller when `start`) and return its exit code."""
    from orchestrator.api import Client, ControllerUnavailable

    try:
        return exit_code_of(lambda: action(Client(address=address, start=start, say=note)))
    except ControllerUnavailable as err:
        return fail(escape(str(err)))
