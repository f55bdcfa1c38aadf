"""Prediction on a video file: every frame detected, an annotated video written, COCO results per
frame (``image_id`` = frame index + 1, plus ``frame`` and ``time_s``).

Decoding and encoding use PyAV (FFmpeg; ``pip install 'detflow[video]'``). The annotated video is
H.264 (``libx264``, else MPEG-4 Part 2) at the source's frame rate, written to a temporary sibling
and renamed: a failed run leaves no half-written file.

Example::

    from detflow.predict import predict_video
    predict_video("runs/…/best", "street.mp4", out_video="street-det.mp4", out="street.json")
"""
from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import DataError, UserInputError
from .detector import Predictor, load_predictor
from .progress import progress_bar

__all__ = ["predict_video"]


def _open(video: Path) -> Any:
    try:
        import av
    except ImportError as exc:
        raise UserInputError(f"video {str(video)!r}: PyAV is not installed ({exc}); pip install 'detflow[video]'") from None
    if not video.is_file():
        raise UserInputError(f"video {str(video)!r}: no such file")
    try:
        container = av.open(str(video))
        if not container.streams.video:
            raise DataError(f"video {str(video)!r}: has no video stream")
        return container
    except av.error.FFmpegError as exc:
        raise DataError(f"video {str(video)!r}: cannot be decoded ({exc})") from None


def _frames(container: Any, video: Path) -> Iterator[np.ndarray]:
    import av

    try:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as exc:
        raise DataError(f"video {str(video)!r}: cannot be decoded ({exc})") from None


def _batches(frames: Iterator[np.ndarray], predictor: Predictor) -> Iterator[tuple[list[np.ndarray], Any, list]]:
    """Frames letterboxed and collated ``predictor.batch_size`` at a time: ``(rgb frames, images, metas)``."""
    from ..data.loader import collate_detection

    transform = predictor.transforms()
    chunk: list[np.ndarray] = []
    for frame in frames:
        chunk.append(frame)
        if len(chunk) == predictor.batch_size:
            yield chunk, *_collate(chunk, transform, collate_detection)
            chunk = []
    if chunk:
        yield chunk, *_collate(chunk, transform, collate_detection)


def _collate(chunk: list[np.ndarray], transform: Any, collate: Any) -> tuple[Any, list]:
    empty = np.zeros((0, 4), np.float32)
    samples = [transform({"image": f, "boxes": empty, "labels": np.zeros(0, np.int64), "masks": None,
                          "image_id": 0, "orig_size": f.shape[:2], "scale": 1.0}) for f in chunk]
    images, _, metas = collate(samples)
    return images, metas


class _Writer:
    """An H.264 (else MPEG-4) encoder into ``<out>.part``, renamed onto ``out`` by :meth:`close`."""

    def __init__(self, out: Path, rate: Fraction, width: int, height: int) -> None:
        import av

        self.out, self.part = out, out.with_name(f".{out.name}.part{out.suffix}")
        self.container = av.open(str(self.part), mode="w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.stream = self.container.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height = width - width % 2, height - height % 2
        self.stream.pix_fmt = "yuv420p"

    def write(self, rgb: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(rgb[: self.stream.height, : self.stream.width], format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self, ok: bool) -> None:
        if ok:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()
        if ok:
            os.replace(self.part, self.out)
        else:
            self.part.unlink(missing_ok=True)


def predict_video(source: str | os.PathLike, video: str | os.PathLike, *, out_video: str | os.PathLike | None = None,
                  out: str | os.PathLike | None = None, backend: str = "torch", device: str | None = None,
                  score_thr: float | None = None, draw_thr: float = 0.3, batch_size: int = 4,
                  progress: bool = False) -> list[dict]:
    """Detect on every frame of ``video``; returns (and writes to ``out``) COCO results with
    ``frame`` and ``time_s``; ``out_video``: the video with detections above ``draw_thr`` drawn.

    Raises:
        UserInputError: no such file, PyAV missing. DataError: a file that does not decode as video.
    """
    from ..evaluation import detections_to_coco
    from ..train.draw import draw_detections

    path = Path(video)
    container = _open(path)
    predictor = load_predictor(source, backend=backend, device=device, score_thr=score_thr, batch_size=batch_size)
    stream = container.streams.video[0]
    rate = stream.average_rate or Fraction(25)
    writer, results, index, ok = None, [], 0, False
    try:
        with progress_bar(stream.frames or None, "predict video", enabled=progress) as advance:
            for frames, images, metas in _batches(_frames(container, path), predictor):
                dets = predictor(images, metas)
                ids = list(range(index + 1, index + len(frames) + 1))
                for r in detections_to_coco(dets, ids, predictor.category_ids):
                    results.append({**r, "frame": r["image_id"] - 1, "time_s": round((r["image_id"] - 1) / float(rate), 4)})
                if out_video is not None:
                    if writer is None:
                        writer = _Writer(Path(out_video), rate, frames[0].shape[1], frames[0].shape[0])
                    for frame, det in zip(frames, dets):
                        writer.write(np.asarray(draw_detections(frame, det, predictor.class_names, thr=draw_thr)))
                index += len(frames)
                advance(len(frames))
        if index == 0:
            raise DataError(f"video {str(path)!r}: no frame could be decoded")
        ok = True
    finally:
        container.close()
        if writer is not None:
            writer.close(ok)
    if out is not None:
        from ..atomic import atomic_write

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(out), json.dumps(results))
    return results
