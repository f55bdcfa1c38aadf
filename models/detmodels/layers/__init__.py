"""Reusable building blocks shared by every family (families never import each other)."""
from .conv import ConvNormAct, fuse_conv_bn, make_act

__all__ = ["ConvNormAct", "fuse_conv_bn", "make_act"]
from .attention import SqueezeExcitation  # noqa: E402
from .cspnext import (  # noqa: E402
    ChannelAttention, CSPLayer, CSPNeXtBlock, DepthwiseSeparableConv, SPPBottleneck,
)
from .ppm import PyramidPoolingModule  # noqa: E402

__all__ += [
    "SqueezeExcitation", "PyramidPoolingModule", "ChannelAttention", "CSPLayer", "CSPNeXtBlock",
    "DepthwiseSeparableConv", "SPPBottleneck",
]
from .bic import BiC  # noqa: E402
from .repvgg import BepC3, BottleRep, CSPStackRep, RepBlock, RepVGGBlock, make_rep_unit  # noqa: E402
from .spp import SPPF, SimCSPSPPF, SimSPPF  # noqa: E402

__all__ += ["BiC", "RepVGGBlock", "RepBlock", "BottleRep", "BepC3", "CSPStackRep", "make_rep_unit",
            "SPPF", "SimSPPF", "SimCSPSPPF"]
