"""Whether a `checkpoint.storage` URI can be used here: a check that touches no network."""

from __future__ import annotations


def check_uri(uri: str) -> str | None:
    """None if fsspec can open this URI's protocol; else the problem."""
    # fsspec is imported here, not above: `ftctl validate` pays for it only when a job
    # names remote storage.
    import fsspec
    from fsspec.core import split_protocol

    protocol = split_protocol(uri)[0] or "file"
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        return f"unknown storage protocol {protocol}:// in '{uri}'"
    except ImportError as err:
        missing = getattr(err.__cause__, "name", None)
        if not missing:
            return f"{protocol}:// cannot be used here: {err}"
        package = missing.split(".")[0]
        return f"{protocol}:// needs the {package} package (pip install {package})"
    return None
