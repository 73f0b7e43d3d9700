"""ResNet architectures: blocks, the two families, the name registry and the model card."""

from .blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck, ZeroPadShortcut
from .card import ModelCard
from .registry import CIFAR_DEPTHS, IMAGENET_DEPTHS, create_model, list_models, model_family
from .resnet import CifarResNet, ResNet, ResNetBase

__all__ = [
    "BasicBlock", "Bottleneck", "PreActBasicBlock", "PreActBottleneck", "ZeroPadShortcut",
    "CIFAR_DEPTHS", "IMAGENET_DEPTHS", "create_model", "list_models", "model_family",
    "CifarResNet", "ResNet", "ResNetBase", "ModelCard",
]
