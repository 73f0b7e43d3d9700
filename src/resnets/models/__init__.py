"""ResNet architectures: blocks, the two families, and the name registry."""

from .blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck, ZeroPadShortcut
from .registry import CIFAR_DEPTHS, IMAGENET_DEPTHS, create_model, list_models, model_family
from .resnet import CifarResNet, ResNet

__all__ = [
    "BasicBlock", "Bottleneck", "PreActBasicBlock", "PreActBottleneck", "ZeroPadShortcut",
    "CIFAR_DEPTHS", "IMAGENET_DEPTHS", "create_model", "list_models", "model_family",
    "CifarResNet", "ResNet",
]
