"""Datasets in YOLO txt (Ultralytics) and Pascal VOC XML form, converted to COCO JSON.

``detflow data convert --from yolo|voc SRC --out DIR`` is :func:`convert_dataset`; a training
config with ``data.format: yolo|voc`` is converted once and cached by content
(:func:`resolve_data_format`, see :mod:`.cache`). Every input problem is a DataError
``FILE:LINE: what is wrong (value)`` (exit 2 at the CLI) and leaves nothing written.

Example::

    from detflow.data.formats import convert_dataset
    for split in convert_dataset("yolo", "datasets/coco8/data.yaml", "data/coco8"):
        print(split.name, split.annotations, split.num_images, split.num_annotations)
"""
from .cache import CachedSplit, cached_split, content_key, resolve_data_format
from .common import Dataset, Split, WrittenSplit
from .convert import FORMATS, convert_dataset, write_coco
from .voc import read_voc, write_voc
from .yolo import read_yolo, write_yolo

__all__ = ["FORMATS", "Dataset", "Split", "WrittenSplit", "convert_dataset", "write_coco", "read_yolo",
           "write_yolo", "read_voc", "write_voc", "CachedSplit", "cached_split", "content_key",
           "resolve_data_format"]
