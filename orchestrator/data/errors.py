"""The exception the data pipeline raises for anything a user must fix."""

from __future__ import annotations


class DataError(Exception):
    """Data cannot be used as configured. The message names the file (and row) and what to do."""
