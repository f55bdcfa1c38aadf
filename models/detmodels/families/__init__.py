"""Importing this package registers every family's variants."""
import importlib

# Each family module registers its variants on import; a family still being written may be absent.
for _name in ("rtmdet", "yolov6", "spinenet", "yolov3_asff"):
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as exc:  # pragma: no cover
        if exc.name != f"{__name__}.{_name}":
            raise
