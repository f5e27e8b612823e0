"""What launchers refuse, and the checks their options share."""

from __future__ import annotations

import re


class LaunchError(Exception):
    """The job cannot be launched as asked; the message (one line per problem) says what to change."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


# Values that land on a #SBATCH line or in a manifest: one token, nothing a shell or YAML reads.
_TOKEN = re.compile(r"^[A-Za-z0-9._:@/+=,-]+$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def at_least(problems: list[str], flag: str, value, low) -> None:
    if value is not None and value < low:
        problems.append(f"{flag} must be at least {low:g} (got {value:g})")


def token(problems: list[str], flag: str, value: str | None) -> None:
    if value is not None and not _TOKEN.match(value):
        problems.append(f"{flag} {value!r} must be one word of letters, digits and ._:@/+=,- (no spaces or quotes)")


def cron(problems: list[str], flag: str, value: str | None) -> None:
    if value is None:
        return
    from orchestrator.cron import CronError, parse_cron

    try:
        parse_cron(value)
    except CronError as err:
        problems.append(f"{flag}: {err}")
