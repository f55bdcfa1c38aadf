"""``--json`` output: stdout carries the JSON document and nothing else.

Ray forwards worker log lines to the driver's stdout and Ray Tune prints its experiment box even when
silent; while a ``--json`` command runs, everything printed to stdout goes to stderr instead.

Example::

    with json_stdout(as_json):
        result = run_training(cfg)
    typer.echo(json.dumps(result.to_dict()))   # after the block: the only line on stdout
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

__all__ = ["json_stdout"]


@contextlib.contextmanager
def json_stdout(as_json: bool) -> Iterator[None]:
    """Send stdout to stderr for the duration of the block when ``as_json``; otherwise do nothing."""
    if not as_json:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield
