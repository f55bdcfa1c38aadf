"""Importing this package registers every family's variants (a failing import is an error)."""
from . import rtmdet, rtmdet_ins, spinenet, yolov3_asff, yolov6  # noqa: F401
