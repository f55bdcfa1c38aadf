"""The table of official releases (``official.yaml`` beside this module): for every registered
variant, where its authors publish COCO weights and how the download is checked.

Import-light on purpose (stdlib + PyYAML, no torch): ``detflow models zoo`` lists it without
building a model.

Example::

    from detflow.weights.catalog import releases_for, has_official_weights
    releases_for("rtmdet_tiny")[0].url        # 'https://download.openmmlab.com/…-78e30dcc.pth'
    has_official_weights("spinenet_49")       # False (TensorFlow checkpoints only)
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from pathlib import Path

import yaml

from ..errors import UserInputError

__all__ = ["Release", "SOURCES", "CATALOG_FILE", "CATALOG_ENV", "load_catalog", "releases_for", "has_official_weights",
           "find_release"]

CATALOG_FILE = Path(__file__).with_name("official.yaml")
CATALOG_ENV = "DETFLOW_WEIGHTS_CATALOG"  # another table in the same format (a private zoo, tests)
SOURCES = ("mmdet", "yolov6", "asff")  # converters of detmodels.load_official_weights
_HEX = re.compile(r"[0-9a-f]+")


@dataclasses.dataclass(frozen=True)
class Release:
    """One official checkpoint of one variant.

    ``source``: converter name (``mmdet``/``yolov6``/``asff``) or ``none`` (no PyTorch release).
    ``file``: local file name (appended to ``DETFLOW_WEIGHTS_BASE_URL``). ``sha256``: full published
    digest or None; ``sha256_prefix``: a published digest prefix (MMDetection's ``-<8 hex>``) or None.
    ``page``: where a person finds the link; ``note``: provenance or caveat.
    """

    model: str
    source: str
    url: str | None = None
    file: str | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None
    page: str | None = None
    note: str | None = None

    @property
    def available(self) -> bool:
        """Whether official weights exist for this entry (a converter and a URL)."""
        return self.source != "none" and bool(self.url)

    @property
    def checksum(self) -> str:
        """How the download is checked, in words (for tables and docs)."""
        if self.sha256:
            return "sha256 (published)"
        if self.sha256_prefix:
            return f"sha256 prefix {self.sha256_prefix} (published)"
        return "none published: first download recorded (trust on first use)" if self.available else "-"


def _check_entry(file: str, i: int, raw: object) -> Release:
    where = f"{file}: releases[{i}]"
    if not isinstance(raw, dict):
        raise UserInputError(f"{where}: expected a mapping, got {raw!r}")
    fields = {f.name for f in dataclasses.fields(Release)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise UserInputError(f"{where}.{unknown[0]}: unknown key; expected one of {', '.join(sorted(fields))}")
    rel = Release(**raw)
    if rel.source not in (*SOURCES, "none"):
        raise UserInputError(f"{where}.source: expected one of {', '.join(SOURCES)}, none; got {rel.source!r}")
    if rel.source != "none" and not (rel.url and rel.file):
        raise UserInputError(f"{where}: source {rel.source} needs url and file")
    if rel.file is not None and (Path(rel.file).name != rel.file or rel.file.startswith(".")):
        raise UserInputError(f"{where}.file: expected a plain file name, got {rel.file!r}")
    for key, size in (("sha256", 64), ("sha256_prefix", None)):
        value = getattr(rel, key)
        if value is not None and (not _HEX.fullmatch(str(value)) or (size and len(value) != size)):
            raise UserInputError(f"{where}.{key}: expected lowercase hex digits, got {value!r}")
    return rel


def load_catalog(path: str | os.PathLike | None = None) -> tuple[Release, ...]:
    """Every entry of the table: ``path``, else ``$DETFLOW_WEIGHTS_CATALOG``, else ``official.yaml``;
    checked (known keys and sources, hex digests, url + file for every entry that has a source)."""
    return _load(str(Path(path or os.environ.get(CATALOG_ENV) or CATALOG_FILE).resolve()))


@functools.lru_cache(maxsize=8)
def _load(file: str) -> tuple[Release, ...]:
    try:
        data = yaml.safe_load(Path(file).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserInputError(f"{file}: cannot read the weights table ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("releases", []), list):
        raise UserInputError(f"{file}: releases: expected a list of entries")
    return tuple(_check_entry(file, i, raw) for i, raw in enumerate(data.get("releases") or []))


def releases_for(model: str) -> list[Release]:
    """The table's entries for ``model`` (a ``source: none`` entry says there is no release);
    empty for a name the table does not know."""
    return [r for r in load_catalog() if r.model == model]


def has_official_weights(model: str) -> bool:
    """Whether ``detflow models pull MODEL`` can fetch official weights."""
    return any(r.available for r in releases_for(model))


def find_release(model: str, source: str | None = None) -> Release:
    """The release ``pull`` uses: the one of ``source`` (or the model's first). One-line
    UserInputError (exit 2) when the model or source has none, with the table's note."""
    if source is not None and source not in SOURCES:
        raise UserInputError(f"--source {source!r}: expected one of {', '.join(SOURCES)}")
    entries = releases_for(model)
    if not entries:
        raise UserInputError(f"{model}: not in the official-weights table "
                             f"({os.environ.get(CATALOG_ENV) or CATALOG_FILE.name}); "
                             "see `detflow models zoo` for the known variants")
    usable = [r for r in entries if r.available and (source is None or r.source == source)]
    if usable:
        return usable[0]
    if source is not None and any(r.available for r in entries):
        have = ", ".join(r.source for r in entries if r.available)
        raise UserInputError(f"{model}: no official {source} release (available: {have})")
    why = "; ".join(r.note for r in entries if r.note) or "the authors publish none"
    raise UserInputError(f"{model}: no official PyTorch weights to pull (source: none: {why}); "
                         "train from scratch or set model.pretrained to a detflow checkpoint")
