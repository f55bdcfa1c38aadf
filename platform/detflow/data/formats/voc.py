"""Pascal VOC datasets (Everingham et al., IJCV 2010, §2 and the devkit) read into COCO records.

Layout (``SRC`` of ``detflow data convert --from voc``, e.g. ``VOCdevkit/VOC2007``)::

    Annotations/<id>.xml        <filename>, <size><width><height>, <object>s with <name>,
                                <difficult> and <bndbox><xmin><ymin><xmax><ymax> (1-based pixels)
    ImageSets/Main/<split>.txt  one <id> per line (train, val, trainval, test; the per-class
                                files such as aeroplane_train.txt are skipped)
    JPEGImages/<filename>

Without ``ImageSets/Main`` every XML goes to split ``all``. The class list is the one given, else
the sorted names found in all XMLs (for VOC's 20 classes, the devkit's order). A box
``xmin ymin xmax ymax`` becomes COCO ``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]``
(detectron2's reading of the 1-based devkit coordinates). ``difficult`` objects are kept as
``iscrowd: 1``: COCOeval ignores detections matched to them and training skips them, as the VOC
protocol does.

XML is read with expat (no DTDs or entities: a ``<!DOCTYPE`` is refused). Each problem is a
DataError ``FILE:LINE: what is wrong (value)``.

Example::

    dataset = read_voc("VOCdevkit/VOC2007")                     # splits train, val, trainval, test
    write_voc("train.json", "images", "voc_out", split="train")  # COCO -> VOC (tests, tools)
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from xml.parsers import expat

from ...errors import DataError
from .common import IMAGE_SUFFIXES, Dataset, Progress, Split, located

__all__ = ["XmlNode", "parse_xml", "VocObject", "VocRecord", "read_voc_xml", "read_voc", "read_voc_split",
           "split_ids", "voc_class_names", "write_voc"]

BOX_TOLERANCE = 1.0  # px a box may exceed the image (then clipped), as `detflow data check`


# --------------------------------------------------------------------------- XML with line numbers
@dataclasses.dataclass
class XmlNode:
    """An XML element: tag, 1-based start line, stripped text and children."""

    tag: str
    line: int
    text: str = ""
    children: list[XmlNode] = dataclasses.field(default_factory=list)

    def find(self, tag: str) -> XmlNode | None:
        return next((c for c in self.children if c.tag == tag), None)

    def findall(self, tag: str) -> list[XmlNode]:
        return [c for c in self.children if c.tag == tag]


def parse_xml(path: Path) -> XmlNode:
    """The root element of ``path``; DataError ``FILE:LINE: …`` on malformed XML or a DOCTYPE."""
    parser = expat.ParserCreate()
    stack: list[XmlNode] = [XmlNode("", 0)]
    texts: list[list[str]] = [[]]

    def start(tag: str, _attrs: dict) -> None:
        node = XmlNode(tag, parser.CurrentLineNumber)
        stack[-1].children.append(node)
        stack.append(node)
        texts.append([])

    def end(_tag: str) -> None:
        stack.pop().text = "".join(texts.pop()).strip()

    def doctype(name: str, *_args) -> None:
        raise located(path, parser.CurrentLineNumber, "DOCTYPE declarations are not accepted", name)

    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = lambda data: texts[-1].append(data)
    parser.StartDoctypeDeclHandler = doctype
    try:
        parser.Parse(path.read_bytes(), True)
    except expat.ExpatError as exc:
        raise located(path, exc.lineno, "not well-formed XML", expat.ErrorString(exc.code)) from None
    except OSError as exc:
        raise located(path, None, "cannot read", exc) from None
    return stack[0].children[0]


# --------------------------------------------------------------------------- one annotation file
@dataclasses.dataclass(frozen=True)
class VocObject:
    name: str
    line: int
    bbox: list[float]  # COCO [x, y, w, h]
    difficult: bool


@dataclasses.dataclass(frozen=True)
class VocRecord:
    path: Path
    filename: str
    width: int
    height: int
    objects: list[VocObject]


def _child(path: Path, node: XmlNode, tag: str) -> XmlNode:
    found = node.find(tag)
    if found is None:
        raise located(path, node.line, f"<{node.tag}> has no <{tag}>", f"children: {[c.tag for c in node.children]}")
    return found


def _positive_int(path: Path, node: XmlNode) -> int:
    try:
        value = float(node.text)
    except ValueError:
        raise located(path, node.line, f"<{node.tag}> is not a number", node.text) from None
    if value <= 0 or not value.is_integer():
        raise located(path, node.line, f"<{node.tag}> is not a positive integer", node.text)
    return int(value)


def _coordinate(path: Path, box: XmlNode, tag: str) -> float:
    node = _child(path, box, tag)
    try:
        return float(node.text)
    except ValueError:
        raise located(path, node.line, f"<{tag}> is not a number", node.text) from None


def _bbox(path: Path, box: XmlNode, width: int, height: int) -> list[float]:
    """COCO ``[x, y, w, h]`` of a 1-based ``<bndbox>``, clipped to the image (1 px tolerance)."""
    xmin, ymin, xmax, ymax = (_coordinate(path, box, t) for t in ("xmin", "ymin", "xmax", "ymax"))
    x0, y0, x1, y1 = xmin - 1, ymin - 1, xmax, ymax
    if x1 <= x0 or y1 <= y0:
        raise located(path, box.line, "<bndbox> has xmax < xmin or ymax < ymin", f"{xmin:g} {ymin:g} {xmax:g} {ymax:g}")
    if x0 < -BOX_TOLERANCE or y0 < -BOX_TOLERANCE or x1 > width + BOX_TOLERANCE or y1 > height + BOX_TOLERANCE:
        raise located(path, box.line, f"<bndbox> outside the {width}x{height} image",
                      f"{xmin:g} {ymin:g} {xmax:g} {ymax:g}")
    x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    return [x0, y0, x1 - x0, y1 - y0]


def _object(path: Path, node: XmlNode, width: int, height: int) -> VocObject:
    name = _child(path, node, "name")
    difficult = node.find("difficult")
    flag = difficult is not None and difficult.text not in ("", "0")
    return VocObject(name.text, name.line, _bbox(path, _child(path, node, "bndbox"), width, height), flag)


def read_voc_xml(path: Path) -> VocRecord:
    """One ``Annotations/<id>.xml``: file name, size and objects (DataError ``FILE:LINE: …``)."""
    root = parse_xml(path)
    if root.tag != "annotation":
        raise located(path, root.line, "expected an <annotation> root element", f"<{root.tag}>")
    size = root.find("size")
    if size is None:
        raise located(path, root.line, "<annotation> has no <size>", "need <width> and <height>")
    width, height = (_positive_int(path, _child(path, size, t)) for t in ("width", "height"))
    filename = root.find("filename")
    name = filename.text if filename is not None and filename.text else path.stem + ".jpg"
    return VocRecord(path, name, width, height, [_object(path, o, width, height) for o in root.findall("object")])


# --------------------------------------------------------------------------- a dataset
def split_ids(list_file: Path) -> list[tuple[str, int]]:
    """``(id, line)`` of an ``ImageSets/Main/<split>.txt`` (first field of each non-blank line)."""
    return [(text.split()[0], n) for n, text in enumerate(list_file.read_text().splitlines(), 1) if text.strip()]


def voc_class_names(records: list[VocRecord]) -> list[str]:
    """The sorted object names found in ``records``."""
    return sorted({obj.name for r in records for obj in r.objects})


def _image_file(record: VocRecord, images_dir: Path) -> Path:
    path = images_dir / record.filename
    if path.is_file():
        return path
    stem = Path(record.filename).stem
    for suffix in IMAGE_SUFFIXES:
        if (images_dir / (stem + suffix)).is_file():
            return images_dir / (stem + suffix)
    raise located(record.path, None, f"image not found in {images_dir}", record.filename)


def read_voc_split(records: list[VocRecord], names: list[str], images_dir: Path) -> Split:
    """A :class:`Split` of ``records`` (category ``k + 1`` = ``names[k]``; an unknown name is an error)."""
    index = {name: k + 1 for k, name in enumerate(names)}
    split = Split()
    for record in records:
        image = _image_file(record, images_dir)
        image_id = split.add_image(image.name, image, record.width, record.height)
        for obj in record.objects:
            if obj.name not in index:
                raise located(record.path, obj.line, "class name not in the class list", obj.name)
            split.add_annotation(image_id, {"category_id": index[obj.name], "bbox": obj.bbox,
                                            "area": obj.bbox[2] * obj.bbox[3], "iscrowd": int(obj.difficult)})
    return split


def _records(ann_dir: Path, progress: Progress | None) -> dict[str, VocRecord]:
    files = sorted(ann_dir.glob("*.xml"))
    if not files:
        raise DataError(f"{ann_dir}: no .xml annotation files (a VOC dataset has Annotations/<id>.xml)")
    records = {}
    for done, path in enumerate(files, 1):
        records[path.stem] = read_voc_xml(path)
        if progress:
            progress(done, len(files))
    return records


def _split_records(list_file: Path, records: dict[str, VocRecord]) -> list[VocRecord]:
    missing = next(((i, n) for i, n in split_ids(list_file) if i not in records), None)
    if missing:
        raise located(list_file, missing[1], "no Annotations/<id>.xml for this id", missing[0])
    return [records[i] for i, _n in dict.fromkeys(split_ids(list_file))]


def split_files(root: Path) -> list[Path]:
    """The split lists of ``root/ImageSets/Main`` (``train.txt``, ``val.txt``…, not ``<class>_<split>.txt``)."""
    main = root / "ImageSets" / "Main"
    return sorted(p for p in main.glob("*.txt") if "_" not in p.stem) if main.is_dir() else []


def read_voc(src: str | os.PathLike, *, classes: list[str] | None = None, images_dir: str | os.PathLike | None = None,
             list_file: str | os.PathLike | None = None, use_lists: bool = True,
             progress: Progress | None = None) -> Dataset:
    """Read a VOC dataset rooted at ``src``: every split list of ``ImageSets/Main`` (or only
    ``list_file``; with ``use_lists=False`` one split ``all`` of every XML), images in ``images_dir``
    (default ``src/JPEGImages``), class names ``classes`` (default: the sorted names of all XMLs).
    File names are the image file names."""
    root = Path(src)
    if not (root / "Annotations").is_dir():
        raise DataError(f"{root}: no Annotations/ folder (a VOC dataset has Annotations/, ImageSets/Main/, "
                        "JPEGImages/)")
    records = _records(root / "Annotations", progress)
    names = list(classes) if classes else voc_class_names(list(records.values()))
    if not names:
        raise DataError(f"{root / 'Annotations'}: no <object> in any file, so no class names (give a class list)")
    images = Path(images_dir) if images_dir is not None else root / "JPEGImages"
    lists = [Path(list_file)] if list_file is not None else split_files(root) if use_lists else []
    chosen = {p.stem: _split_records(p, records) for p in lists} or {"all": list(records.values())}
    return Dataset("voc", names, {k: read_voc_split(v, names, images) for k, v in chosen.items() if v})


# --------------------------------------------------------------------------- writer (COCO -> VOC)
def _xml(img: dict, objects: list[tuple[str, list[float], int]]) -> str:
    from xml.sax.saxutils import escape

    parts = [f"<annotation>\n  <filename>{escape(img['file_name'])}</filename>\n",
             f"  <size><width>{img['width']}</width><height>{img['height']}</height><depth>3</depth></size>\n"]
    for name, (x, y, w, h), crowd in objects:
        x0, y0 = round(x) + 1, round(y) + 1
        x1, y1 = max(round(x + w), x0), max(round(y + h), y0)
        parts.append(f"  <object><name>{escape(name)}</name><difficult>{crowd}</difficult><bndbox><xmin>{x0}</xmin>"
                     f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>\n")
    return "".join(parts) + "</annotation>\n"


def write_voc(annotations: str | os.PathLike, images_dir: str | os.PathLike, out: str | os.PathLike, *,
              split: str = "train") -> Path:
    """Write a COCO file as VOC under ``out`` (``Annotations/``, ``ImageSets/Main/<split>.txt``,
    ``JPEGImages/`` links; crowd objects become ``difficult``); more splits may be added to the
    same ``out``. Returns ``out``. Used by the round-trip tests."""
    out = Path(out)
    data = json.loads(Path(annotations).read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    by_image: dict[int, list] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append((names[ann["category_id"]], ann["bbox"], ann.get("iscrowd", 0)))
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for img in data["images"]:
        stem = Path(img["file_name"]).stem
        ids.append(stem)
        (out / "Annotations" / f"{stem}.xml").write_text(_xml(img, by_image.get(img["id"], [])))
        link = out / "JPEGImages" / img["file_name"]
        if not link.exists():
            os.symlink((Path(images_dir) / img["file_name"]).resolve(), link)
    (out / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
    return out
