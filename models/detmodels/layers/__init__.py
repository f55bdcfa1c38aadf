"""Reusable building blocks shared by every family (families never import each other)."""
from .conv import ConvNormAct, fuse_conv_bn, make_act

__all__ = ["ConvNormAct", "fuse_conv_bn", "make_act"]
