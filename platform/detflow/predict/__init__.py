"""Detections from any deployable artifact: a checkpoint, an fp32 or int8 ONNX export, a TensorRT
engine's graph, a registered version (``models:/NAME@ALIAS``), on images or a video.

Example::

    from detflow.predict import predict, predict_video
    results = predict("out/int8", images_dir="data/synth/images", out="preds.json", backend="onnxruntime")
    predict_video("runs/…/best", "street.mp4", out_video="street-det.mp4", out="street.json")
"""
from .detector import Predictor, load_predictor
from .images import IMAGE_SUFFIXES, predict
from .video import predict_video

__all__ = ["Predictor", "load_predictor", "predict", "predict_video", "IMAGE_SUFFIXES"]
