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
from .repopt import LinearAddBlock, RealVGGBlock  # noqa: E402
from .spp import SPPF, SimCSPSPPF, SimSPPF  # noqa: E402

__all__ += ["BiC", "RepVGGBlock", "RepBlock", "BottleRep", "BepC3", "CSPStackRep", "make_rep_unit",
            "SPPF", "SimSPPF", "SimCSPSPPF", "LinearAddBlock", "RealVGGBlock"]
from .asff import ASFF, ASFFResize, RFBBlock  # noqa: E402
from .darknet import SPP, Darknet53, DarknetBottleneck, DarknetStage  # noqa: E402
from .deform_conv import DeformConv2d, deform_conv2d  # noqa: E402
from .dropblock import DropBlock  # noqa: E402
from .spinenet_blocks import BlockGroup, BottleneckBlock, ResidualBlock, Resample, ScalePermutedBlock, StochasticDepth  # noqa: E402,E501

__all__ += ["ASFF", "ASFFResize", "RFBBlock", "SPP", "Darknet53", "DarknetBottleneck", "DarknetStage", "DeformConv2d",
            "deform_conv2d", "DropBlock", "BlockGroup", "BottleneckBlock", "ResidualBlock", "Resample",
            "ScalePermutedBlock", "StochasticDepth"]
