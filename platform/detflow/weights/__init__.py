"""Official weights: the release table (:mod:`.catalog`), a resumable checked download
(:mod:`.download`), ``detflow models pull`` (:mod:`.pull`), conversion into a detflow checkpoint
(:mod:`.convert`) and ``model.pretrained`` resolution (:mod:`.resolve`). See docs/weights.md.

Importing this package stays light (no torch): ``detflow models zoo`` reads the table only.
"""
from .catalog import Release, find_release, has_official_weights, load_catalog, releases_for

__all__ = ["Release", "releases_for", "has_official_weights", "find_release", "load_catalog"]
