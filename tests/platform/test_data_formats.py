"""YOLO and Pascal VOC datasets: ``detflow data convert``, round trips, located errors, the content-hash
cache behind ``data.format`` in training configs, and a short training on a YOLO dataset."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from detflow.cli import main
from detflow.data.formats import convert_dataset, read_voc, read_yolo, write_voc, write_yolo

LOCATED = re.compile(r"^(?P<file>[^\s:]+):(?P<line>\d+): (?P<what>.+) \((?P<value>.+)\)$")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from detflow.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth"), num_images=8, image_size=64, seed=3, val_fraction=0.25)


@pytest.fixture()
def yolo_dir(synth, tmp_path) -> Path:
    """The synthetic set written as an Ultralytics dataset (boxes)."""
    write_yolo({"train": (synth.train_json, synth.images_dir), "val": (synth.val_json, synth.images_dir)},
               tmp_path / "yolo")
    return tmp_path / "yolo"


@pytest.fixture()
def voc_dir(synth, tmp_path) -> Path:
    for split, path in (("train", synth.train_json), ("val", synth.val_json)):
        write_voc(path, synth.images_dir, tmp_path / "voc", split=split)
    return tmp_path / "voc"


def _objects(coco: dict) -> dict[str, list[tuple[str, list[float]]]]:
    """Image file stem -> [(class name, bbox)] in annotation order."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    stems = {img["id"]: Path(img["file_name"]).stem for img in coco["images"]}
    out: dict[str, list] = {stem: [] for stem in stems.values()}
    for ann in sorted(coco["annotations"], key=lambda a: a["id"]):
        out[stems[ann["image_id"]]].append((names[ann["category_id"]], ann["bbox"]))
    return out


def _assert_same_objects(original: Path, converted: Path) -> None:
    before, after = _objects(json.loads(original.read_text())), _objects(json.loads(converted.read_text()))
    assert before.keys() == after.keys()
    assert sum(map(len, before.values())) > 5
    for stem, objects in before.items():
        assert [name for name, _ in after[stem]] == [name for name, _ in objects], stem
        for (_, box), (_, got) in zip(objects, after[stem]):
            assert max(abs(a - b) for a, b in zip(box, got)) <= 1.0, (stem, box, got)


# --------------------------------------------------------------------------- round trips
def test_coco_to_yolo_to_coco_keeps_boxes_and_classes(synth, yolo_dir, tmp_path, capsys):
    out = tmp_path / "coco"
    assert main(["data", "convert", "--from", "yolo", str(yolo_dir / "data.yaml"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"train: {out / 'train.json'} (6 images" in printed and "4 classes" in printed
    _assert_same_objects(Path(synth.train_json), out / "train.json")
    _assert_same_objects(Path(synth.val_json), out / "val.json")
    cats = json.loads((out / "train.json").read_text())["categories"]
    assert [c["name"] for c in cats] == ["circle", "triangle", "square", "star"]


def test_voc_to_coco_keeps_boxes_classes_and_difficult_as_crowd(synth, voc_dir, tmp_path):
    xml = voc_dir / "Annotations" / "000001.xml"  # mark one object difficult
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1))
    written = convert_dataset("voc", voc_dir, tmp_path / "coco")
    assert {w.name for w in written} == {"train", "val"}
    _assert_same_objects(Path(synth.train_json), tmp_path / "coco" / "train.json")
    _assert_same_objects(Path(synth.val_json), tmp_path / "coco" / "val.json")
    anns = json.loads((tmp_path / "coco" / "train.json").read_text())["annotations"]
    assert sum(a["iscrowd"] for a in anns) == 1


def test_yolo_polygons_become_segmentations(synth, tmp_path):
    write_yolo({"train": (synth.train_json, synth.images_dir)}, tmp_path / "yolo", segments=True)
    label = next((tmp_path / "yolo" / "labels" / "train").glob("*.txt"))
    label.write_text("1 0.25 0.25 0.75 0.25 0.5 0.75\n")  # a triangle on a 64 px image
    dataset = read_yolo(tmp_path / "yolo")
    split = dataset.splits["train"]
    image = next(i for i in split.images if Path(i["file_name"]).stem == label.stem)
    (ann,) = [a for a in split.annotations if a["image_id"] == image["id"]]
    assert ann["segmentation"] == [[16.0, 16.0, 48.0, 16.0, 32.0, 48.0]]
    assert ann["bbox"] == [16.0, 16.0, 32.0, 32.0] and ann["area"] == pytest.approx(512.0)
    assert ann["category_id"] == 2
    # the other images' polygons come back within a pixel of the COCO originals (longest part of each)
    original = json.loads(Path(synth.train_json).read_text())
    stems = {i["id"]: Path(i["file_name"]).stem for i in original["images"]}
    before = [max(a["segmentation"], key=len) for a in sorted(original["annotations"], key=lambda a: a["id"])
              if stems[a["image_id"]] != label.stem]
    new_stems = {i["id"]: Path(i["file_name"]).stem for i in split.images}
    after = [a["segmentation"][0] for a in split.annotations if new_stems[a["image_id"]] != label.stem]
    assert len(after) == len(before) > 5
    for poly, got in zip(before, after):
        assert len(poly) == len(got) and max(abs(a - b) for a, b in zip(poly, got)) <= 1.0


def test_classes_txt_layout_and_names_mapping(synth, yolo_dir, tmp_path):
    (yolo_dir / "data.yaml").unlink()
    (yolo_dir / "classes.txt").write_text("circle\ntriangle\nsquare\nstar\n")
    dataset = read_yolo(yolo_dir)
    assert dataset.names == ["circle", "triangle", "square", "star"]
    assert set(dataset.splits) == {"train", "val"} and len(dataset.splits["val"].images) == 2


def test_data_yaml_path_relative_to_the_working_directory_and_bad_names(yolo_dir, tmp_path, monkeypatch):
    import yaml

    from detflow.errors import DataError

    spec = yaml.safe_load((yolo_dir / "data.yaml").read_text())
    elsewhere = tmp_path / "configs" / "mine.yaml"  # Ultralytics style: `path` from the working directory
    elsewhere.parent.mkdir()
    elsewhere.write_text(yaml.safe_dump({**spec, "path": "yolo"}))
    monkeypatch.chdir(tmp_path)
    assert len(read_yolo(elsewhere).splits["train"].images) == 6
    elsewhere.write_text(yaml.safe_dump({**spec, "names": {0: "a", 2: "b"}}))
    with pytest.raises(DataError, match=r"mine.yaml: names: expected class indices 0..N-1 as keys \(\[0, 2\]\)"):
        read_yolo(elsewhere)


def test_image_without_label_file_has_no_objects(yolo_dir):
    label = next((yolo_dir / "labels" / "train").glob("*.txt"))
    label.unlink()
    split = read_yolo(yolo_dir / "data.yaml").splits["train"]
    image = next(i for i in split.images if Path(i["file_name"]).stem == label.stem)
    assert not [a for a in split.annotations if a["image_id"] == image["id"]]


def test_unknown_format_and_missing_source_exit_2(yolo_dir, tmp_path, capsys):
    assert main(["data", "convert", "--from", "coco", str(yolo_dir), "--out", str(tmp_path / "o")]) == 2
    assert "--from 'coco': expected one of yolo, voc" in capsys.readouterr().err
    assert main(["data", "convert", "--from", "voc", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'nope'}: dataset not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- links, copies, --out
def test_images_are_linked_unless_copy(yolo_dir, tmp_path):
    convert_dataset("yolo", yolo_dir, tmp_path / "linked")
    convert_dataset("yolo", yolo_dir, tmp_path / "copied", copy=True)
    linked = sorted((tmp_path / "linked" / "images").rglob("*.jpg"))
    copied = sorted((tmp_path / "copied" / "images").rglob("*.jpg"))
    assert len(linked) == len(copied) == 8
    assert all(p.is_symlink() and p.resolve().is_file() for p in linked)
    assert not any(p.is_symlink() for p in copied)
    assert copied[0].read_bytes() == linked[0].read_bytes()


def test_non_empty_out_is_refused(yolo_dir, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["data", "convert", "--from", "yolo", str(yolo_dir), "--out", str(tmp_path / "out")]) == 2
    assert "exists and is not an empty directory" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep.txt"]


# --------------------------------------------------------------------------- located errors
def _first_label(yolo_dir: Path) -> Path:
    return sorted((yolo_dir / "labels" / "train").glob("*.txt"))[0]


YOLO_BAD_LINES = [
    ("7 0.5 0.5 0.2 0.2", "class index out of range 0..3", "7"),
    ("1 0.5 0.5 0.2", "expected 'class cx cy w h' or 'class x1 y1 x2 y2 x3 y3 …'", "4 fields"),
    ("1 0.5 abc 0.2 0.2", "coordinate is not a number", "abc"),
    ("1 0.5 0.5 1.2 0.2", "coordinate outside [0, 1]", "1.2"),
    ("one 0.5 0.5 0.2 0.2", "class index is not a number", "one"),
]


@pytest.mark.parametrize("line, what, value", YOLO_BAD_LINES, ids=["class", "fields", "nan", "outside", "classname"])
def test_bad_yolo_line_is_located_and_nothing_written(yolo_dir, tmp_path, capsys, line, what, value):
    label = _first_label(yolo_dir)
    label.write_text(label.read_text() + line + "\n")
    bad_line = len(label.read_text().splitlines())
    out = tmp_path / "out"
    assert main(["data", "convert", "--from", "yolo", str(yolo_dir / "data.yaml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    found = LOCATED.match(err.removeprefix("error: "))
    assert found, err
    assert (found["file"], int(found["line"]), found["what"], found["value"]) == (str(label), bad_line, what, value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_voc_without_size_is_located_exit_2_from_the_cli(voc_dir, tmp_path, cli_env):
    xml = voc_dir / "Annotations" / "000002.xml"
    xml.write_text(re.sub(r"<size>.*</size>", "", xml.read_text()))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "detflow", "data", "convert", "--from", "voc", str(voc_dir),
                           "--out", str(out)], env=cli_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"{xml}:1: <annotation> has no <size> (need <width> and <height>)" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()


def test_voc_unknown_class_with_a_class_list(voc_dir, tmp_path, capsys):
    classes = tmp_path / "classes.txt"
    classes.write_text("circle\ntriangle\nsquare\n")  # no star
    out = tmp_path / "out"
    assert main(["data", "convert", "--from", "voc", str(voc_dir), "--out", str(out), "--classes", str(classes)]) == 2
    err = capsys.readouterr().err.strip().removeprefix("error: ")
    found = LOCATED.match(err)
    assert found and found["what"] == "class name not in the class list" and found["value"] == "star", err
    assert Path(found["file"]).parent == voc_dir / "Annotations" and int(found["line"]) >= 4
    assert not out.exists()


def test_voc_bad_xml_and_doctype_are_located(voc_dir, tmp_path):
    from detflow.errors import DataError

    xml = voc_dir / "Annotations" / "000003.xml"
    xml.write_text(xml.read_text().replace("</filename>", "</filenam>"))
    with pytest.raises(DataError, match=rf"^{re.escape(str(xml))}:2: not well-formed XML \(mismatched tag\)$"):
        read_voc(voc_dir)
    xml.write_text('<?xml version="1.0"?>\n<!DOCTYPE lol [<!ENTITY a "aaaa">]>\n<annotation/>\n')
    with pytest.raises(DataError, match=r"000003.xml:2: DOCTYPE declarations are not accepted \(lol\)"):
        read_voc(voc_dir)


def test_converted_split_failing_data_check_leaves_nothing(voc_dir, tmp_path):
    """The checks of `detflow data check` run on the written files: an XML size that differs from the
    image (the converter trusts the XML) is refused and nothing is kept."""
    from detflow.errors import DataError

    xml = voc_dir / "Annotations" / "000001.xml"
    xml.write_text(xml.read_text().replace("<width>64</width>", "<width>80</width>"))
    with pytest.raises(DataError, match="images whose file size differs from width/height"):
        convert_dataset("voc", voc_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- data.format in configs
def _yolo_config(yolo_dir: Path, path: Path, **extra) -> Path:
    import yaml

    cfg = {"kind": "train", "name": "yolo-data", "model": {"name": "rtmdet_tiny"},
           "data": {"format": "yolo", "image_size": 64,
                    "train": {"annotations": "yolo/data.yaml", "images": "yolo/images/train"},
                    "val": {"annotations": "yolo/data.yaml", "images": "yolo/images/val"}}, **extra}
    assert yolo_dir == path.parent / "yolo"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_format_yolo_config_is_converted_once_and_cached(yolo_dir, tmp_path, monkeypatch):
    from detflow.config import TrainConfig, load_config
    from detflow.train import resolve_train_config

    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    path = _yolo_config(yolo_dir, tmp_path / "train.yaml")
    first = resolve_train_config(load_config(TrainConfig, path), path.parent)
    ann = Path(first.data.train.annotations)
    assert first.data.format == "coco" and first.model.num_classes == 4
    assert ann.parent.parent == tmp_path / "home" / "datasets" and ann.name == "annotations.json"
    assert len(json.loads(ann.read_text())["images"]) == 6
    assert Path(first.data.val.annotations).parent != ann.parent  # val: its own split, its own key
    stamp = ann.stat().st_mtime_ns
    second = resolve_train_config(load_config(TrainConfig, path), path.parent)
    assert second.data.train.annotations == str(ann) and ann.stat().st_mtime_ns == stamp
    assert len(list((tmp_path / "home" / "datasets").iterdir())) == 2
    label = _first_label(yolo_dir)  # an edited label is a new dataset
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
    third = resolve_train_config(load_config(TrainConfig, path), path.parent)
    assert third.data.train.annotations != str(ann)
    extra = len(json.loads(Path(third.data.train.annotations).read_text())["annotations"])
    assert extra == len(json.loads(ann.read_text())["annotations"]) + 1


def test_format_voc_config_with_a_split_list(voc_dir, tmp_path, monkeypatch):
    from detflow.config import TrainConfig, parse_config
    from detflow.train import resolve_train_config

    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    main_lists = voc_dir / "ImageSets" / "Main"
    cfg = parse_config(TrainConfig, {
        "model": {"name": "rtmdet_tiny"},
        "data": {"format": "voc", "image_size": 64,
                 "train": {"annotations": str(main_lists / "train.txt"), "images": str(voc_dir / "JPEGImages")},
                 "val": {"annotations": str(main_lists / "val.txt"), "images": str(voc_dir / "JPEGImages")}}})
    resolved = resolve_train_config(cfg)
    train = json.loads(Path(resolved.data.train.annotations).read_text())
    val = json.loads(Path(resolved.data.val.annotations).read_text())
    assert (len(train["images"]), len(val["images"])) == (6, 2)
    assert train["categories"] == val["categories"] and resolved.model.num_classes == 4


def test_format_yolo_config_with_a_bad_label_exits_2(yolo_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    label = _first_label(yolo_dir)
    label.write_text("9 0.5 0.5 0.1 0.1\n")
    path = _yolo_config(yolo_dir, tmp_path / "train.yaml")
    assert main(["train", str(path)]) == 2
    assert f"{label}:1: class index out of range 0..3 (9)" in capsys.readouterr().err
    datasets = tmp_path / "home" / "datasets"
    assert not datasets.exists() or not list(datasets.iterdir())  # nothing cached, no temporaries left


@pytest.mark.slow
def test_training_on_a_yolo_dataset(yolo_dir, tmp_path, cli_env):
    from detflow.engine.checkpoint import read_config

    path = _yolo_config(yolo_dir, tmp_path / "train.yaml",
                        recipe={"name": "rtmdet", "mosaic": {"max_cached_images": 4},
                                "mixup": {"max_cached_images": 2}},
                        train={"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 2, "schedule": {"warmup_iters": 1},
                               "optimizer": {"scale_lr_by_batch": False}},
                        scaling={"workers": 1, "cpus_per_worker": 1})
    proc = subprocess.run([sys.executable, "-m", "detflow", "train", str(path), "--json"], env=cli_env,
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    datasets = Path(cli_env["DETFLOW_HOME"]) / "datasets"
    assert len(list(datasets.iterdir())) == 2
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "val/bbox_mAP" in result["metrics"]
    stored = read_config(result["checkpoint"])  # the run's resolved config names the converted COCO files
    assert stored.data.format == "coco" and Path(stored.data.train.annotations).parent.parent == datasets
    assert stored.model.num_classes == 4
