"""Data for training and evaluation: reading images, image folders, CIFAR archives, caching, loaders.

* :func:`read_rgb` - one image file to a uint8 3xHxW RGB tensor, whatever its mode (see ``images``).
* :func:`load_image_folder`, :func:`find_classes` - an image-folder split into memory, cached once decoded.
* :func:`load_cifar` - CIFAR-10/100 from the official python archive, parsed without running code.
* :func:`open_data` - a spec (folder, ``cifar10``, archive, ``sample``) to :class:`DataSplits`.
* :func:`open_eval_split` - the test/val split of a spec alone (the training split is never read).
* :class:`DeviceBatches` - fast batches of small images with the paper's augmentation, on any device;
  :class:`RankBatches` - one process's slice of them.
* :func:`streaming_loader` - a DataLoader for large images (ImageNet-style folders).
* :func:`open_train`, :func:`open_eval` - any source (in memory, streamed folder, shards) for training or
  evaluation, behind one batches protocol (:class:`TrainBatches`); see ``sources``.
"""

from .batches import DeviceBatches, RankBatches
from .cache import default_cache_dir
from .cifar import download_cifar, load_cifar
from .folder import find_classes, load_image_folder
from .images import MAX_IMAGE_PIXELS, BadImageError, decode_rgb, read_rgb
from .sample import extract_sample
from .sources import EvalData, TrainBatches, TrainData, TrainDataSpec, open_eval, open_train
from .splits import DataSplits, eval_split_dir, open_data, open_eval_split
from .streaming import ImageFolderDataset, imagenet_transforms, streaming_loader
from .tensors import ImageTensors, LoadReport

__all__ = [
    "MAX_IMAGE_PIXELS", "BadImageError", "DataSplits", "DeviceBatches", "EvalData", "ImageFolderDataset",
    "ImageTensors", "LoadReport", "RankBatches", "TrainBatches", "TrainData", "TrainDataSpec", "decode_rgb",
    "default_cache_dir", "download_cifar", "eval_split_dir", "extract_sample", "find_classes",
    "imagenet_transforms", "load_cifar", "load_image_folder", "open_data", "open_eval", "open_eval_split",
    "open_train", "read_rgb", "streaming_loader",
]
