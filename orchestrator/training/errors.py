"""How the driver side of a job says it cannot go on."""


class JobFailed(Exception):
    """A job could not run; the message says why and what to do."""
