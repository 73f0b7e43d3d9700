"""A keras.applications weights entry (a legacy .h5 of weights only, checked by its MD5 as Keras checks it) goes
through the Keras import: fetched over loopback into Keras' cache, then read as the same function."""

from __future__ import annotations

import hashlib
import os
import sys
import threading

import pytest
import torch

if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "torch"  # read once, when keras is first imported
keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

import resnets  # noqa: E402
from resnets.pretrained import registered  # noqa: E402
from resnets.pretrained.table import Entry  # noqa: E402
from test_pretrained import Files, caches  # noqa: E402,F401 - the loopback server and the cache fixture


def test_keras_applications_entry_imports_as_the_same_function(tmp_path, caches):  # noqa: F811
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(0)
    net = keras.applications.ResNet50(weights=None)
    legacy = tmp_path / "made.h5"
    with h5py.File(legacy, "w") as f:  # the layout of keras-applications' *_tf_dim_ordering_tf_kernels.h5
        legacy_h5_format.save_weights_to_hdf5_group(f, net)
    body = legacy.read_bytes()
    srv = Files()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        path = "/tensorflow/keras-applications/resnet/resnet50_weights_tf_dim_ordering_tf_kernels.h5"
        srv.files[path] = body
        entry = Entry("resnet50.made_in1k", "resnet50", "v1", "tests", "none", srv.base + path,
                      "md5:" + hashlib.md5(body).hexdigest(), cache="keras", format="keras-h5")
        with registered(entry):
            model = resnets.create_model("resnet50", weights=entry.name)
    finally:
        srv.shutdown()
        srv.server_close()
    assert (caches / "keras" / "models" / entry.file_name).read_bytes() == body  # Keras' own cache and name
    assert model.card.classes[1] == "goldfish" and model.card.spec["variant"] == "v1"
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 224, 224, generator=g)
    mean = torch.tensor(model.card.normalization["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.card.normalization["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = torch.softmax(model((rgb - mean) / std), 1)
    caffe = (rgb.flip(1) * 255 - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)).permute(0, 2, 3, 1)
    theirs = torch.as_tensor(keras.ops.convert_to_numpy(net(caffe.numpy(), training=False)))
    assert (ours - theirs).abs().max().item() < 1e-4
