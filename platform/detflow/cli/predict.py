"""``detflow predict SOURCE``: detections from any artifact on images, a COCO file's images or a video."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

__all__ = ["register", "predict_cmd"]


def predict_cmd(
    source: str = typer.Argument(..., help="Checkpoint dir, export dir (fp32 / int8 ONNX), .onnx file, "
                                 "TensorRT engine dir, models:/NAME@ALIAS or s3:// URI."),
    images: Optional[Path] = typer.Option(None, "--images", help="Directory of images (or the image dir of --annotations)."),
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="COCO JSON whose images to predict on."),
    video: Optional[Path] = typer.Option(None, "--video", help="A video file: every frame is detected."),
    out: Path = typer.Option(..., "--out", help="Where to write the COCO results JSON."),
    draw: Optional[Path] = typer.Option(None, "--draw", help="Images: a directory for drawn images; video: the "
                                        "annotated video file (e.g. out.mp4)."),
    backend: str = typer.Option("torch", "--backend", help="torch | torch.compile | onnxruntime | "
                                "onnxruntime-cuda | tensorrt (ONNX artifacts need an ONNX backend; an engine dir "
                                "runs on tensorrt)."),
    score_thr: Optional[float] = typer.Option(None, "--score-thr", min=0, max=1, help="Keep detections above this score."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Images per forward pass."),
) -> None:
    """Run a model artifact on images or a video and write COCO results (and drawings).

    Example: detflow predict out/int8 --backend onnxruntime --video street.mp4 --out street.json --draw street-det.mp4
    """
    from ..errors import UserInputError
    from ..predict import predict, predict_video

    given = [name for name, value in (("--images", images), ("--annotations", annotations), ("--video", video))
             if value is not None]
    if not given or (video is not None and len(given) > 1):
        raise UserInputError(f"detflow predict: expected --images DIR, --annotations FILE or --video FILE, got "
                             f"{' '.join(given) or 'none'}")
    if video is not None:
        results = predict_video(source, video, out_video=draw, out=out, backend=backend, score_thr=score_thr,
                                batch_size=batch_size, progress=True)
    else:
        results = predict(source, images_dir=images, annotations=annotations, out=out, draw_dir=draw,
                          score_thr=score_thr, batch_size=batch_size, backend=backend, progress=True)
    typer.echo(f"wrote {len(results)} detections to {out}" + (f"; drawings in {draw}" if draw else ""))


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_cmd)
