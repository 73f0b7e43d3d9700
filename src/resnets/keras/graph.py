"""Read a Keras model's graph as a ResNet: stem, stages of blocks, head, found by layer types and connections.

Nothing here looks at layer names (``conv2_block1_1_conv`` and ``conv2d_17`` read alike); names appear only
in the messages, which name the first layer that does not fit and what was expected there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError

STANDARD_WIDTHS = {"imagenet": (64, 128, 256, 512), "cifar": (16, 32, 64)}
ACTIVATION_TYPES = ("Activation", "ReLU")


class NotAResNet(UserError):
    """The graph is not one the resnets ResNets compute: the message names the first layer that does not fit."""


@dataclass
class Op:
    """One layer (or operation) of the graph: its type, config, and the layers it reads and feeds."""

    name: str
    kind: str  # the class name, e.g. "Conv2D"
    config: dict[str, Any]
    layer: Any
    parents: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"


@dataclass
class Unit:
    """A convolution, the batch norm after it, and whether a ReLU follows. ``pad``: how the conv pads."""

    conv: Op
    bn: Op | None  # None for a ResNetV2 stem and a projection without BN (keras.io): the conv keeps its bias
    relu: bool
    kernel: int
    stride: int
    filters: int
    pad: str  # "torch" (symmetric, as PyTorch's padding=(k-1)/2), or "tf" (Keras strided "same")


@dataclass
class Block:
    """A residual block: the main branch's units and the projection shortcut (None: identity)."""

    kind: str  # "basic" or "bottleneck"
    units: list[Unit]
    shortcut: Unit | None
    stride: int
    width: int
    stride_in_1x1: bool


@dataclass
class V2Block:
    """A keras.applications ResNetV2 block: pre-activation BN(-ReLU), 1x1 and 3x3 units, a last 1x1 with a bias,
    and the shortcut: a projection conv with a bias (from the pre-activation), a subsample, or the identity."""

    pre_bn: Op
    units: list[Unit]
    last_conv: Op
    projection: Op | None
    stride: int
    width: int
    kind: str = "bottleneck"
    shortcut: None = None
    stride_in_1x1: bool = False


@dataclass
class CifarV2Block:
    """A block of keras.io's CIFAR-10 ``resnet_v2``: BN-ReLU (``pre_bn``; None in the net's first block), the
    1x1 (the stride) and 3x3 units, a last 1x1 with a bias, and where the shape changes a 1x1 projection with a
    bias from the block's input."""

    pre_bn: Op | None
    units: list[Unit]
    last_conv: Op
    projection: Op | None
    stride: int
    width: int  # the output channels / 4, as resnets' widths
    inner: int  # the 1x1 and 3x3 filters: the stage's input channels
    kind: str = "bottleneck"
    shortcut: None = None
    stride_in_1x1: bool = True


@dataclass
class Structure:
    """A Keras ResNet as resnets sees it."""

    family: str  # "imagenet" (7x7 stem and max pool) or "cifar" (3x3 stem)
    in_chans: int
    stem: Unit
    pool_pad: str | None  # the stem's max pool: "torch", "tf", or None (CIFAR: no pool)
    stages: list[list[Block | V2Block | CifarV2Block]]
    dense: Op
    softmax: bool  # the head ends in a softmax (resnets returns the logits before it)
    input_shape: tuple[Any, ...]
    applications_layout: bool  # ZeroPadding2D + 'valid' stem and batch-norm eps 1.001e-5, as keras.applications
    post_bn: Op | None = None  # pre-activation nets: the batch norm (and ReLU) after the last block
    whole_map_pool: Op | None = None  # an AveragePooling2D over the whole last map, read as the global pool

    @property
    def v2(self) -> bool:
        """A keras.applications ResNetV2 layout (variant ``keras-v2``)."""
        return self.post_bn is not None and self.family == "imagenet"

    @property
    def cifar_v2(self) -> bool:
        """keras.io's CIFAR-10 ``resnet_v2`` layout (variant ``keras-cifar-v2``)."""
        return self.post_bn is not None and self.family == "cifar"

    @property
    def projection_bn(self) -> bool:
        """False where the projection shortcuts have no batch norm (keras.io's ``resnet_v1``); NotAResNet if some
        have one and some not."""
        shortcuts = [b.shortcut for s in self.stages for b in s if b.shortcut is not None]
        without = [u for u in shortcuts if u.bn is None]
        if without and len(without) != len(shortcuts):
            raise NotAResNet(f"{without[0].conv}: a projection without batch norm where other projections have one; "
                             "expected one kind throughout")
        return not without

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The graph's fixed (height, width), or None where the input takes any size."""
        h, w = self.input_shape[1:3]
        return (int(h), int(w)) if isinstance(h, int) and isinstance(w, int) else None

    @property
    def kind(self) -> str:
        return self.stages[0][0].kind

    @property
    def blocks(self) -> list[int]:
        return [len(s) for s in self.stages]

    @property
    def tf_padding(self) -> bool | list[str]:
        """The ``tf_padding`` model option: True where every strided layer wider than 1x1 pads as Keras'
        'same', else the places that do (``"conv1"``, ``"maxpool"``, ``"blocks"``), False for none."""
        strided = [u for s in self.stages for b in s for u in b.units if u.stride > 1 and u.kernel > 1]
        pads = {"conv1": {self.stem.pad} if self.stem.stride > 1 else set(),
                "maxpool": {self.pool_pad} if self.pool_pad else set(),
                "blocks": {u.pad for u in strided}}
        if pads["blocks"] == {"torch", "tf"}:
            first = next(u for u in strided if u.pad == "tf")
            raise NotAResNet(f"{first.conv}: 'same' padding on a strided 3x3 where other blocks pad "
                             "symmetrically; expected one kind of padding in all blocks")
        relevant = {place for place, found in pads.items() if found}
        tf = {place for place, found in pads.items() if found == {"tf"}}
        return True if tf and tf == relevant else sorted(tf) if tf else False

    @property
    def stride_in_1x1(self) -> bool:
        return any(b.stride_in_1x1 for s in self.stages for b in s)

    def units(self) -> list[Unit]:
        """Every conv + batch norm: the stem, then each block's branch and projection."""
        units = [self.stem]
        for stage in self.stages:
            for block in stage:
                units += block.units + ([block.shortcut] if block.shortcut is not None else [])
        return units

    def bns(self) -> list[Op]:
        bns = [u.bn for u in self.units() if u.bn is not None]
        bns += [b.pre_bn for s in self.stages for b in s if isinstance(b, V2Block | CifarV2Block) and b.pre_bn]
        return bns + ([self.post_bn] if self.post_bn is not None else [])


class Graph:
    """The model's layers by name with parents and children, and a cursor helper for the walk."""

    def __init__(self, model: Any) -> None:
        self.ops: dict[str, Op] = {}
        operations = list(getattr(model, "operations", None) or model.layers)
        for layer in operations:
            nodes = getattr(layer, "_inbound_nodes", [])
            if len(nodes) > 1:
                raise NotAResNet(f"{layer.name} ({type(layer).__name__}) is called {len(nodes)} times; "
                                 "expected each layer once (shared layers are not a ResNet)")
            try:
                config = layer.get_config()
            except Exception:  # noqa: BLE001 - an op without a config: its type names it
                config = {}
            op = Op(layer.name, type(layer).__name__, config, layer)
            if nodes:
                op.parents = [p.operation.name for p in nodes[0].parent_nodes]
            self.ops[op.name] = op
        for op in self.ops.values():
            for parent in op.parents:
                self.ops[parent].children.append(op.name)
        outputs = [t._keras_history[0].name for t in model.outputs]
        if len(outputs) != 1:
            raise NotAResNet(f"the model has {len(outputs)} outputs; expected one (the classifier)")
        self.output = outputs[0]
        inputs = [op for op in self.ops.values() if op.kind == "InputLayer"]
        if len(inputs) != 1:
            raise NotAResNet(f"the model has {len(inputs)} inputs; expected one image input")
        self.input = inputs[0]

    def child(self, op: Op, expected: str) -> Op:
        """``op``'s only consumer; NotAResNet if it feeds none or several."""
        if len(op.children) != 1:
            where = "nothing" if not op.children else ", ".join(map(str, (self.ops[c] for c in op.children)))
            raise NotAResNet(f"{op} feeds {where}; expected it to feed only {expected}")
        return self.ops[op.children[0]]


def expect(op: Op, kinds: str | tuple[str, ...], what: str) -> Op:
    if op.kind not in ((kinds,) if isinstance(kinds, str) else kinds):
        raise NotAResNet(f"{op}: expected {what}")
    return op


def is_relu(op: Op) -> bool:
    c = op.config
    if op.kind == "Activation":
        return c.get("activation") == "relu"
    if op.kind == "ReLU":
        return (c.get("max_value") is None and not c.get("negative_slope") and not c.get("threshold"))
    return False


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    a, b = value
    return int(a), int(b)


def _symmetric_pad(op: Op) -> int:
    """The amount a ZeroPadding2D pads on every side; NotAResNet if it is not the same on all four."""
    pad = op.config.get("padding", 1)
    if isinstance(pad, int):
        return pad
    (top, bottom), (left, right) = (_pair(p) for p in pad)
    if len({top, bottom, left, right}) != 1:
        raise NotAResNet(f"{op}: expected the same padding on every side, found {pad}")
    return top


def padding_of(op: Op, explicit: int | None, kernel: int, stride: int) -> str:
    """``"torch"`` when the layer pads as PyTorch's symmetric ``(k-1)/2``, ``"tf"`` for Keras' strided 'same'."""
    mode = op.config.get("padding", "valid")
    if explicit is not None and mode != "valid":
        raise NotAResNet(f"{op}: expected padding='valid' after a ZeroPadding2D, found '{mode}'")
    if explicit is not None or mode == "valid":
        pad = explicit or 0
        if pad != (kernel - 1) // 2:
            raise NotAResNet(f"{op}: a {kernel}x{kernel} layer padded {pad} on each side; expected "
                             f"{(kernel - 1) // 2} (ZeroPadding2D({(kernel - 1) // 2}) + 'valid', or 'same')")
        return "torch"
    if mode == "same":
        return "tf" if stride > 1 and kernel > 1 else "torch"
    raise NotAResNet(f"{op}: unsupported padding '{mode}'")


class Reader:
    """Walks a :class:`Graph` from the input to the output, building a :class:`Structure`."""

    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.seen: set[str] = {graph.input.name}
        self.whole_map_pool: Op | None = None

    def take(self, op: Op) -> Op:
        self.seen.add(op.name)
        return op

    def padded(self, op: Op) -> tuple[Op, int | None]:
        """Skip a ZeroPadding2D: the layer after it and its padding (None when there was none)."""
        if op.kind == "ZeroPadding2D":
            self.take(op)
            return self.g.child(op, "a convolution or pooling layer"), _symmetric_pad(op)
        return op, None

    def unit(self, op: Op, *, relu: bool | None, bn_optional: bool = False) -> tuple[Unit, Op]:
        """Conv2D -> BatchNormalization (-> ReLU): the unit and its last layer. ``relu``: required (True),
        forbidden (False), or either (None). ``bn_optional``: a conv straight into an Add may have no batch norm
        (a projection shortcut as keras.io's CIFAR ResNet builds it; the conv's bias is kept)."""
        conv, explicit = self.padded(op)
        expect(conv, "Conv2D", "a Conv2D (a ResNet convolution)")
        c = conv.config
        kernel, stride = _pair(c["kernel_size"]), _pair(c["strides"])
        if kernel[0] != kernel[1] or stride[0] != stride[1]:
            raise NotAResNet(f"{conv}: expected a square kernel and stride, found {kernel} stride {stride}")
        if _pair(c.get("dilation_rate", 1)) != (1, 1) or int(c.get("groups", 1)) != 1:
            raise NotAResNet(f"{conv}: expected no dilation and no groups")
        if c.get("activation") not in (None, "linear"):
            raise NotAResNet(f"{conv}: expected no activation inside the convolution (a batch norm follows), "
                             f"found '{c.get('activation')}'")
        if c.get("data_format", "channels_last") != "channels_last":
            raise NotAResNet(f"{conv}: expected data_format='channels_last'")
        pad = padding_of(conv, explicit, kernel[0], stride[0])
        self.take(conv)
        after = self.g.child(conv, "a BatchNormalization")
        if bn_optional and after.kind == "Add":
            return Unit(conv, None, False, kernel[0], stride[0], int(c["filters"]), pad), conv
        bn = self.take(expect(after, "BatchNormalization",
                              f"a BatchNormalization after {conv.name} (each convolution of a post-activation "
                              "ResNet is normalised before its ReLU or the Add)"))
        axis = bn.config.get("axis", -1)
        axis = axis[0] if isinstance(axis, list | tuple) and len(axis) == 1 else axis
        if axis not in (-1, 3):
            raise NotAResNet(f"{bn}: expected the channel axis (-1), found axis={axis}")
        last, has_relu = bn, False
        if len(bn.children) == 1 and is_relu(nxt := self.g.ops[bn.children[0]]):
            last, has_relu = self.take(nxt), True
        if relu is True and not has_relu:
            raise NotAResNet(f"{self.g.child(bn, 'a ReLU')}: expected a ReLU after {bn.name}")
        if relu is False and has_relu:
            raise NotAResNet(f"{last}: expected no ReLU before the Add (blocks add, then apply ReLU)")
        return Unit(conv, bn, has_relu, kernel[0], stride[0], int(c["filters"]), pad), last

    def read(self) -> Structure:
        g = self.g
        shape = tuple(g.input.config.get("batch_shape") or g.input.config.get("batch_input_shape") or ())
        if len(shape) != 4:
            raise NotAResNet(f"{g.input}: expected an image input (batch, height, width, channels), found {shape}: "
                             "a ResNet convolves images")
        in_chans = shape[-1]
        if in_chans is None:
            raise NotAResNet(f"{g.input}: expected a known number of channels (channels_last)")
        first = g.child(g.input, "the stem convolution")
        conv = g.ops[first.children[0]] if first.kind == "ZeroPadding2D" and len(first.children) == 1 else first
        if conv.kind != "Conv2D":
            raise NotAResNet(f"{conv}: expected the stem convolution (a Conv2D) reading the image input; a ResNet "
                             "starts with one")
        if [g.ops[k].kind for k in conv.children] != ["BatchNormalization"] and self._is_v2():
            return self.read_v2(first, shape, int(in_chans))  # a stem conv without BN: keras.applications' V2
        stem, last = self.unit(first, relu=True)
        if stem.kernel == 7 and stem.stride == 2:
            family = "imagenet"
            pool, explicit = self.padded(g.child(last, "the stem's max pool"))
            expect(pool, "MaxPooling2D", "the stem's 3x3 max pool, stride 2")
            size, stride = _pair(pool.config["pool_size"]), _pair(pool.config["strides"] or pool.config["pool_size"])
            if size != (3, 3) or stride != (2, 2):
                raise NotAResNet(f"{pool}: expected a 3x3 max pool with stride 2, found {size} stride {stride}")
            pool_pad: str | None = padding_of(pool, explicit, 3, 2)
            last = self.take(pool)
        elif stem.kernel == 3 and stem.stride == 1:
            family, pool_pad = "cifar", None
        else:
            raise NotAResNet(f"{stem.conv}: expected the stem convolution, 7x7 stride 2 (ImageNet ResNets) or "
                             f"3x3 stride 1 (CIFAR ResNets), found {stem.kernel}x{stem.kernel} stride {stem.stride}")
        if self._preactivated(last):
            if family != "cifar":
                raise NotAResNet(f"{stem.conv}: pre-activation blocks (no ReLU after the Add) after a conv-BN-ReLU "
                                 "7x7 stem; expected post-activation blocks here (keras.applications' ResNetV2 has "
                                 "a stem conv without batch norm; keras.io's resnet_v2 a 3x3 stem)")
            return self.read_cifar_v2(stem, last, shape, int(in_chans))
        blocks: list[Block] = []
        channels = stem.filters
        while True:
            nxt = [g.ops[c] for c in last.children]
            if not nxt:
                raise NotAResNet(f"{last}: the model ends here; expected a GlobalAveragePooling2D and a Dense "
                                 "classifier (keras.applications: include_top=True)")
            if len(nxt) == 1 and nxt[0].kind in ("GlobalAveragePooling2D", "Flatten", "AveragePooling2D", "Dense"):
                break
            block, last = self.block(last, channels)
            channels = block.units[-1].filters
            blocks.append(block)
        if not blocks:
            raise NotAResNet(f"{g.child(last, 'a block')}: expected residual blocks after the stem")
        stages = self.stages(blocks, family, stem)
        dense, softmax = self.head(last)
        unused = [op for op in g.ops.values() if op.name not in self.seen]
        if unused:
            raise NotAResNet(f"{unused[0]}: a layer outside the ResNet's path; expected none")
        structure = Structure(family, int(in_chans), stem, pool_pad, stages, dense, softmax, shape, False,
                              whole_map_pool=self.whole_map_pool)
        eps = {float(bn.config.get("epsilon", 1e-3)) for bn in structure.bns()}
        structure.applications_layout = first.kind == "ZeroPadding2D" and eps == {1.001e-5}
        structure.tf_padding  # noqa: B018 - refuses blocks that mix paddings
        return structure

    def block(self, start: Op, channels: int) -> tuple[Block, Op]:
        """The block reading ``start``'s output: two paths into an Add, then a ReLU."""
        g = self.g
        kids = [g.ops[c] for c in start.children]
        if len(kids) != 2:
            first = kids[0] if kids else start
            raise NotAResNet(f"{first}: expected a residual block: {start.name}'s output feeding both the block's "
                             f"first convolution and its shortcut (an Add, or a 1x1 projection), found "
                             f"{len(kids)} consumer(s): a residual block adds its input to its branch's output")
        paths = []
        for kid in kids:
            units: list[Unit] = []
            op = kid
            while op.kind != "Add":
                unit, last = self.unit(op, relu=None, bn_optional=True)
                units.append(unit)
                if not unit.relu:
                    op = g.child(last, "the block's Add")
                    expect(op, "Add", f"the block's Add (the shortcut joins after {last.name})")
                    break
                op = g.child(last, "the next convolution")
            paths.append((units, op))
        (units_a, add_a), (units_b, add_b) = paths
        if add_a.name != add_b.name or len(add_a.parents) != 2:
            raise NotAResNet(f"{add_b}: expected the block's two paths from {start.name} to meet in one Add")
        main, short = (units_a, units_b) if len(units_a) >= len(units_b) else (units_b, units_a)
        if len(short) > 1:
            raise NotAResNet(f"{short[1].conv}: expected the shortcut to be the identity or one 1x1 projection")
        shortcut = short[0] if short else None
        if shortcut is not None and (shortcut.kernel != 1 or shortcut.relu):
            raise NotAResNet(f"{shortcut.conv}: expected a 1x1 projection (conv, with or without a batch norm) on "
                             "the shortcut")
        for u in main:
            if u.bn is None:
                raise NotAResNet(f"{u.conv}: expected a BatchNormalization after it (each convolution of the "
                                 "block's branch is normalised; only a 1x1 projection may go without)")
        for u in main[:-1]:
            if not u.relu:
                raise NotAResNet(f"{u.bn}: expected a ReLU after it")
        kernels = [u.kernel for u in main]
        head = main[0].conv
        if kernels == [1, 3, 1]:
            kind, width = "bottleneck", main[0].filters
            want = [width, width, 4 * width]
        elif kernels == [3, 3]:
            kind, width = "basic", main[0].filters
            want = [width, width]
        else:
            raise NotAResNet(f"{head}: expected a basic block (3x3, 3x3) or a bottleneck (1x1, 3x3, 1x1), found "
                             f"{', '.join(f'{k}x{k}' for k in kernels)} convolutions")
        for u, w in zip(main, want, strict=True):
            if u.filters != w:
                raise NotAResNet(f"{u.conv}: expected {w} filters in a {kind} of width {width}, found {u.filters}")
        strides = [u.stride for u in main]
        stride = max(strides)
        if sorted(strides)[:-1] != [1] * (len(strides) - 1) or main[-1].stride != 1:
            raise NotAResNet(f"{head}: expected one strided convolution (the first 1x1 or the 3x3), found strides "
                             f"{strides}")
        stride_in_1x1 = kind == "bottleneck" and strides[0] > 1
        out = main[-1].filters
        if shortcut is None and (stride != 1 or channels != out):
            raise NotAResNet(f"{add_a}: an identity shortcut where the block changes shape ({channels} -> {out} "
                             f"channels, stride {stride}); expected a 1x1 projection")
        if shortcut is not None:
            if stride == 1 and channels == out:
                raise NotAResNet(f"{shortcut.conv}: a projection shortcut where the shape does not change; "
                                 "expected the identity (as the paper's option B)")
            if shortcut.stride != stride or shortcut.filters != out:
                raise NotAResNet(f"{shortcut.conv}: expected a 1x1 projection to {out} channels with stride "
                                 f"{stride}, found {shortcut.filters} with stride {shortcut.stride}")
        self.take(add_a)
        relu = g.child(add_a, "a ReLU")
        if not is_relu(relu):
            raise NotAResNet(f"{relu}: expected a ReLU after the Add")
        self.take(relu)
        return Block(kind, main, shortcut, stride, width, stride_in_1x1), relu

    def stages(self, blocks: list[Block], family: str, stem: Unit) -> list[list[Block]]:
        stages: list[list[Block]] = []
        for b in blocks:
            if not stages or b.stride > 1:
                stages.append([])
            stages[-1].append(b)
        widths = STANDARD_WIDTHS[family]
        if family == "imagenet" and stem.filters != 64 or family == "cifar" and stem.filters != 16:
            raise NotAResNet(f"{stem.conv}: expected {widths[0]} filters in the stem, found {stem.filters}")
        if blocks[0].stride != 1:
            raise NotAResNet(f"{blocks[0].units[0].conv}: expected the first stage not to stride (the stem did)")
        if len(stages) != len(widths):
            last = stages[min(len(stages), len(widths)) - 1][0]
            raise NotAResNet(f"{last.units[0].conv}: expected {len(widths)} stages (widths "
                             f"{', '.join(map(str, widths))}), found {len(stages)}")
        kinds = {b.kind for b in blocks}
        for stage, width in zip(stages, widths, strict=True):
            for b in stage:
                if b.kind != blocks[0].kind:
                    raise NotAResNet(f"{b.units[0].conv}: a {b.kind} among {blocks[0].kind} blocks; expected one "
                                     f"block kind throughout ({', '.join(sorted(kinds))} found)")
                if b.width != width:
                    raise NotAResNet(f"{b.units[0].conv}: expected width {width} in this stage, found {b.width}")
        return stages

    def whole_map(self, pool: Op) -> Op:
        """An AveragePooling2D that covers the whole map (keras.io's ``AveragePooling2D(8)`` at 32x32): the global
        average pool at the graph's input size; NotAResNet where it is not, or the input size is free."""
        c = pool.config
        size = _pair(c["pool_size"])
        strides = _pair(c.get("strides") or c["pool_size"])
        try:
            h, w = tuple(pool.layer.input.shape)[1:3]
        except (AttributeError, ValueError, TypeError):
            h = w = None
        if h is None or w is None:
            raise NotAResNet(f"{pool}: an AveragePooling2D({size[0]}) is the global average pool only at a fixed "
                             "input size, and the model's input has none; rebuild it with its input shape, e.g. "
                             "keras.Input((32, 32, 3)), and load the weights into it")
        if (int(h), int(w)) != size or (c.get("padding", "valid") != "valid" and strides != size):
            raise NotAResNet(f"{pool}: pools {size[0]}x{size[1]} of a {h}x{w} map; expected the global average pool "
                             "(a GlobalAveragePooling2D, or an AveragePooling2D over the whole map) before the "
                             "classifier")
        return pool

    def head(self, last: Op) -> tuple[Op, bool]:
        """Global average pool (or an AveragePooling2D over the whole map, then Flatten) -> (Flatten, Dropout) ->
        Dense (softmax or linear) -> (softmax)."""
        g = self.g
        pool = g.child(last, "the global average pool")
        if pool.kind == "AveragePooling2D":
            self.whole_map_pool = self.take(self.whole_map(pool))
            expect(g.child(pool, "a Flatten"), "Flatten", "a Flatten after the whole-map average pool")
        else:
            self.take(expect(pool, "GlobalAveragePooling2D", "a GlobalAveragePooling2D (or an AveragePooling2D "
                             "over the whole map, then Flatten): the global average pool a ResNet ends with"))
        op = g.child(pool, "the classifier")
        while op.kind in ("Flatten", "Dropout"):
            self.take(op)
            op = g.child(op, "the classifier")
        dense = self.take(expect(op, "Dense", "a Dense classifier after the pooling"))
        act = dense.config.get("activation")
        if act not in ("linear", None, "softmax"):
            raise NotAResNet(f"{dense}: expected a softmax or linear classifier, found activation '{act}'")
        softmax = act == "softmax"
        end = dense
        if dense.children:
            after = g.child(dense, "a softmax")
            is_softmax = (after.kind == "Softmax" and after.config.get("axis", -1) in (-1, 1, [-1])) or (
                after.kind == "Activation" and after.config.get("activation") == "softmax")
            if softmax or not is_softmax:
                raise NotAResNet(f"{after}: expected the model to end with the classifier (or one softmax)")
            softmax, end = True, self.take(after)
        if end.name != g.output:
            raise NotAResNet(f"{end}: expected the model's output here")
        return dense, softmax

    def _is_v2(self) -> bool:
        """A batch norm and ReLU between the last Add and the pooling: a pre-activation (V2) net."""
        ops = self.g.ops
        chain = [ops[self.g.output]]
        while chain[-1].parents and len(chain) < 8:
            chain.append(ops[chain[-1].parents[0]])
        kinds = [op.kind for op in chain]
        if "GlobalAveragePooling2D" not in kinds:
            return False
        i = kinds.index("GlobalAveragePooling2D")
        return kinds[i + 1:i + 3] in (["Activation", "BatchNormalization"], ["ReLU", "BatchNormalization"])

    def _preactivated(self, start: Op) -> bool:
        """Whether the first Add after ``start`` feeds something other than one ReLU: pre-activation blocks."""
        g, queue, seen = self.g, [start], {start.name}
        while queue and len(seen) < 64:
            op = queue.pop(0)
            if op.kind == "Add":
                kids = [g.ops[k] for k in op.children]
                return not (len(kids) == 1 and is_relu(kids[0]))
            for k in op.children:
                if k not in seen:
                    seen.add(k)
                    queue.append(g.ops[k])
        return False

    def read_cifar_v2(self, stem: Unit, last: Op, shape: tuple[Any, ...], in_chans: int) -> Structure:
        """keras.io's CIFAR-10 ``resnet_v2`` (variant ``keras-cifar-v2``): the conv-BN-ReLU 3x3 stem read, then
        pre-activation bottlenecks, a final BN-ReLU and the pooled head."""
        g = self.g
        if stem.filters != 16:
            raise NotAResNet(f"{stem.conv}: expected 16 filters in the stem, found {stem.filters}")
        blocks: list[CifarV2Block] = []
        channels = stem.filters
        while True:
            kids = [g.ops[k] for k in last.children]
            if blocks and len(kids) == 1 and kids[0].kind == "BatchNormalization" and len(kids[0].children) == 1:
                relu = g.ops[kids[0].children[0]]
                if is_relu(relu) and [g.ops[k].kind for k in relu.children] in (
                        ["GlobalAveragePooling2D"], ["AveragePooling2D"]):
                    post_bn = self.take(kids[0])
                    last = self.take(relu)
                    break
            block, last = self.block_cifar_v2(last, channels, first=not blocks)
            channels = 4 * block.width
            blocks.append(block)
        stages: list[list[CifarV2Block]] = []
        for b in blocks:
            if not stages or b.projection is not None:
                stages.append([])
            stages[-1].append(b)
        widths = STANDARD_WIDTHS["cifar"]
        if len(stages) != len(widths):
            raise NotAResNet(f"{stages[-1][0].units[0].conv}: expected {len(widths)} stages (each starting with a "
                             f"projection; outputs {', '.join(str(4 * w) for w in widths)}), found {len(stages)}")
        inner = stem.filters
        for i, (stage, width) in enumerate(zip(stages, widths, strict=True)):
            for b in stage:
                stride = (1 if i == 0 else 2) if b is stage[0] else 1
                if (b.width, b.inner, b.stride) != (width, inner, stride):
                    raise NotAResNet(f"{b.units[0].conv}: expected {inner} inner and {4 * width} output filters, "
                                     f"stride {stride} (keras.io's resnet_v2: the stage's input channels inside, "
                                     f"x4 then x2 out), found {b.inner} and {4 * b.width}, stride {b.stride}")
            inner = 4 * width
        dense, softmax = self.head(last)
        unused = [op for op in g.ops.values() if op.name not in self.seen]
        if unused:
            raise NotAResNet(f"{unused[0]}: a layer outside the ResNet's path; expected none")
        structure = Structure("cifar", in_chans, stem, None, stages, dense, softmax,  # type: ignore[arg-type]
                              shape, False, post_bn, self.whole_map_pool)
        return structure

    def block_cifar_v2(self, x: Op, channels: int, *, first: bool) -> tuple[CifarV2Block, Op]:
        """(BN-ReLU,) 1x1, BN-ReLU, 3x3, BN-ReLU, 1x1 + bias into an Add with the shortcut from ``x`` itself: the
        identity or a 1x1 projection with a bias. The net's first block has no BN-ReLU (the stem's serves)."""
        g = self.g
        kids = [g.ops[k] for k in x.children]
        projections = [k for k in kids if k.kind == "Conv2D" and [g.ops[c].kind for c in k.children] == ["Add"]]
        rest = [k for k in kids if k not in projections]
        pre = [k for k in rest if k.kind == "BatchNormalization"]
        if len(kids) != 2 or len(projections) > 1 or (first and len(rest) != 1) or (not first and len(pre) != 1):
            what = "its first 1x1 convolution" if first else "its pre-activation BatchNormalization"
            raise NotAResNet(f"{kids[0] if kids else x}: expected a residual block: {x.name}'s output feeding {what} "
                             f"and the shortcut (the Add, or a 1x1 projection into it), found {len(kids)} consumer(s)")
        pre_bn = None
        if first:
            main = rest[0]
        else:
            pre_bn = self.take(pre[0])
            relu = g.child(pre_bn, "a ReLU")
            if not is_relu(relu):
                raise NotAResNet(f"{relu}: expected a ReLU after the pre-activation {pre_bn.name}")
            main = g.child(self.take(relu), "the block's first 1x1 convolution")
        u1, l1 = self.unit(main, relu=True)
        u2, l2 = self.unit(g.child(l1, "the 3x3 convolution"), relu=True)
        conv3 = self.take(expect(g.child(l2, "the last 1x1 convolution"), "Conv2D",
                                 "the block's last 1x1 convolution (before the Add, in a pre-activation block)"))
        c3 = conv3.config
        inner, out = u1.filters, int(c3["filters"])
        if (u1.kernel, u2.kernel, u2.stride, u2.filters) != (1, 3, 1, inner) or _pair(c3["kernel_size"]) != (1, 1) \
                or _pair(c3["strides"]) != (1, 1) or c3.get("activation") not in (None, "linear") or out % 4:
            raise NotAResNet(f"{u1.conv}: expected a pre-activation bottleneck: 1x1 ({inner}, the stride), 3x3 "
                             f"({inner}), 1x1 (linear, a multiple of 4 filters)")
        add = expect(g.child(conv3, "the block's Add"), "Add", "the block's Add")
        stride = u1.stride
        projection = projections[0] if projections else None
        if projection is not None:
            p = projection.config
            if _pair(p["kernel_size"]) != (1, 1) or _pair(p["strides"]) != (stride, stride) \
                    or int(p["filters"]) != out or p.get("activation") not in (None, "linear") \
                    or g.ops[projection.children[0]].name != add.name:
                raise NotAResNet(f"{projection}: expected a linear 1x1 projection to {out} channels, stride {stride}, "
                                 f"into {add.name}")
            if stride == 1 and channels == out:
                raise NotAResNet(f"{projection}: a projection where the shape does not change; expected the identity")
            self.take(projection)
        elif stride != 1 or channels != out:
            raise NotAResNet(f"{add}: an identity shortcut where the block changes shape ({channels} -> {out} "
                             f"channels, stride {stride}); expected a 1x1 projection")
        elif x.name not in add.parents:
            raise NotAResNet(f"{add}: expected the shortcut from {x.name} into it")
        if len(add.parents) != 2:
            raise NotAResNet(f"{add}: expected two inputs, the branch and the shortcut")
        self.take(add)
        return CifarV2Block(pre_bn, [u1, u2], conv3, projection, stride, out // 4, inner), add

    def read_v2(self, first: Op, shape: tuple[Any, ...], in_chans: int) -> Structure:
        """keras.applications ResNet50V2/101V2/152V2 (and nets built the same way), variant ``keras-v2``."""
        g = self.g
        conv, explicit = self.padded(first)
        expect(conv, "Conv2D", "the stem convolution")
        c = conv.config
        kernel, stride = _pair(c["kernel_size"]), _pair(c["strides"])
        if kernel != (7, 7) or stride != (2, 2) or c.get("activation") not in (None, "linear"):
            raise NotAResNet(f"{conv}: expected a ResNetV2 stem, a linear 7x7 convolution with stride 2")
        if padding_of(conv, explicit, 7, 2) != "torch" or explicit is None:
            raise NotAResNet(f"{conv}: expected ZeroPadding2D(3) + 'valid' in a ResNetV2 stem, as keras.applications")
        if int(c["filters"]) != 64:
            raise NotAResNet(f"{conv}: expected 64 filters in the stem, found {c['filters']}")
        stem = Unit(self.take(conv), None, False, 7, 2, 64, "torch")
        pool, pad = self.padded(g.child(conv, "the stem's max pool"))
        expect(pool, "MaxPooling2D", "the stem's 3x3 max pool, stride 2")
        size, pstride = _pair(pool.config["pool_size"]), _pair(pool.config["strides"] or pool.config["pool_size"])
        if size != (3, 3) or pstride != (2, 2) or pad != 1 or pool.config.get("padding") != "valid":
            raise NotAResNet(f"{pool}: expected ZeroPadding2D(1) + a 3x3 'valid' max pool, stride 2 (ResNetV2's stem)")
        last = self.take(pool)
        blocks: list[V2Block] = []
        channels = 64
        while True:
            kids = [g.ops[k] for k in last.children]
            if len(kids) == 1 and kids[0].kind == "BatchNormalization" and len(kids[0].children) == 1:
                relu = g.ops[kids[0].children[0]]
                if is_relu(relu) and [g.ops[k].kind for k in relu.children] == ["GlobalAveragePooling2D"]:
                    post_bn = self.take(kids[0])
                    last = self.take(relu)
                    break
            block, last = self.block_v2(last, channels)
            channels = 4 * block.width
            blocks.append(block)
        stages: list[list[V2Block]] = []
        for b in blocks:
            if not stages or b.projection is not None:
                stages.append([])
            stages[-1].append(b)
        widths = STANDARD_WIDTHS["imagenet"]
        if len(stages) != len(widths):
            raise NotAResNet(f"{stages[-1][0].units[0].conv}: expected {len(widths)} stages (widths "
                             f"{', '.join(map(str, widths))}), found {len(stages)}")
        for i, (stage, width) in enumerate(zip(stages, widths, strict=True)):
            want = [1] * (len(stage) - 1) + [2 if i < len(widths) - 1 else 1]
            for b, s in zip(stage, want, strict=True):
                if b.width != width or b.stride != s:
                    raise NotAResNet(f"{b.units[1].conv}: expected width {width} and stride {s} (ResNetV2 strides in "
                                     f"the last block of each stage but the last), found {b.width}, stride {b.stride}")
        dense, softmax = self.head(last)
        unused = [op for op in g.ops.values() if op.name not in self.seen]
        if unused:
            raise NotAResNet(f"{unused[0]}: a layer outside the ResNet's path; expected none")
        structure = Structure("imagenet", in_chans, stem, "torch", stages, dense, softmax,  # type: ignore[arg-type]
                              shape, False, post_bn)
        eps = {float(bn.config.get("epsilon", 1e-3)) for bn in structure.bns()}
        structure.applications_layout = eps == {1.001e-5}
        structure.tf_padding  # noqa: B018 - refuses blocks that mix paddings
        return structure

    def block_v2(self, x: Op, channels: int) -> tuple[V2Block, Op]:
        """BN-ReLU, then the branch (1x1, 3x3, 1x1 + bias) and the shortcut, meeting in an Add."""
        g = self.g
        kids = [g.ops[k] for k in x.children]
        bns = [k for k in kids if k.kind == "BatchNormalization"]
        if len(bns) != 1 or len(kids) > 2:
            raise NotAResNet(f"{kids[0] if kids else x}: expected a ResNetV2 block: {x.name}'s output feeding its "
                             "pre-activation BatchNormalization and at most a shortcut")
        pre_bn = self.take(bns[0])
        relu = g.child(pre_bn, "a ReLU")
        if not is_relu(relu):
            raise NotAResNet(f"{relu}: expected a ReLU after the pre-activation {pre_bn.name}")
        self.take(relu)
        other = [k for k in kids if k is not pre_bn]
        rkids = [g.ops[k] for k in relu.children]
        projection = None
        if len(rkids) == 2:
            proj = [k for k in rkids if k.kind == "Conv2D" and len(k.children) == 1
                    and g.ops[k.children[0]].kind == "Add"]
            if len(proj) != 1 or other:
                raise NotAResNet(f"{rkids[0]}: expected a 1x1 projection from the pre-activation straight into the "
                                 "Add, beside the block's first convolution")
            projection = proj[0]
            main = next(k for k in rkids if k is not projection)
        elif len(rkids) == 1:
            main = rkids[0]
        else:
            raise NotAResNet(f"{relu}: expected it to feed the block's first convolution (and a projection)")
        u1, l1 = self.unit(main, relu=True)
        u2, l2 = self.unit(g.child(l1, "the 3x3 convolution"), relu=True)
        conv3 = self.take(expect(g.child(l2, "the last 1x1 convolution"), "Conv2D",
                                 "the block's last 1x1 convolution (no batch norm after it, in ResNetV2)"))
        width = u1.filters
        c3 = conv3.config
        if (u1.kernel, u1.stride, u2.kernel, u2.filters) != (1, 1, 3, width) or _pair(c3["kernel_size"]) != (1, 1) \
                or _pair(c3["strides"]) != (1, 1) or int(c3["filters"]) != 4 * width \
                or c3.get("activation") not in (None, "linear"):
            raise NotAResNet(f"{u1.conv}: expected a ResNetV2 bottleneck: 1x1 ({width}), 3x3 ({width}, the stride), "
                             f"1x1 ({4 * width}, linear)")
        add = expect(g.child(conv3, "the block's Add"), "Add", "the block's Add")
        stride = u2.stride
        if projection is not None:
            p = projection.config
            if _pair(p["kernel_size"]) != (1, 1) or _pair(p["strides"]) != (stride, stride) \
                    or int(p["filters"]) != 4 * width or p.get("activation") not in (None, "linear"):
                raise NotAResNet(f"{projection}: expected a linear 1x1 projection to {4 * width} channels, stride "
                                 f"{stride}")
            if channels == 4 * width:
                raise NotAResNet(f"{projection}: a projection where the channels do not change; expected a "
                                 "subsample or the identity")
            self.take(projection)
        else:
            if channels != 4 * width:
                raise NotAResNet(f"{add}: a shortcut without projection where the channels change "
                                 f"({channels} -> {4 * width})")
            if not other:
                raise NotAResNet(f"{add}: expected a shortcut from {x.name} into it")
            short = other[0]
            if short.kind == "MaxPooling2D":
                size, s = _pair(short.config["pool_size"]), _pair(short.config["strides"] or short.config["pool_size"])
                if size != (1, 1) or s != (stride, stride) or g.child(short, "the Add").name != add.name:
                    raise NotAResNet(f"{short}: expected a 1x1 max pool with stride {stride} (a subsample) into "
                                     f"{add.name}")
                self.take(short)
            elif short.name != add.name or stride != 1:
                raise NotAResNet(f"{short}: expected the identity shortcut into {add.name} (stride 1), or a subsample")
        if len(add.parents) != 2:
            raise NotAResNet(f"{add}: expected two inputs, the branch and the shortcut")
        self.take(add)
        return V2Block(pre_bn, [u1, u2], conv3, projection, stride, width), add
