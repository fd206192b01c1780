"""The parameter pytrees the benchmarks step, as ``{leaf name: shape}``.

* ``large_leaf``: one leaf of 2**24 (16.8M) elements, where a step is pure
  memory bandwidth;
* ``resnet50``: ResNet-50's 161 leaves (53 convolutions with a batch-norm
  scale and bias each, and the classifier), 25.6M parameters;
* ``transformer``: a 24-layer, width-256 decoder (293 leaves, 23.4M);
* ``small_leaves``: 1024 leaves of 32 to 1024 elements, where a step is
  per-leaf overhead.

Smoke mode keeps the first few leaves of each structure, with tiny sizes.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

LARGE_SHAPES = ("large_leaf", "resnet50", "transformer")


def shape_sets(smoke: bool) -> dict[str, dict[str, tuple[int, ...]]]:
    if smoke:  # A few tiny leaves of each structure: compiling costs per leaf.
        return {
            "large_leaf": {"w": (4096,)},
            "resnet50": _first(resnet50(base=4, blocks=(1,), classes=10), 4),
            "transformer": _first(transformer(1, 16, vocab=64, context=16), 4),
            "small_leaves": small_leaves(4),
        }
    return {
        "large_leaf": {"w": (1 << 24,)},
        "resnet50": resnet50(),
        "transformer": transformer(),
        "small_leaves": small_leaves(1024),
    }


def resnet50(base=64, blocks=(3, 4, 6, 3), classes=1000) -> dict:
    """Bottleneck ResNet: HWIO convolutions, each with a batch-norm scale, bias."""
    shapes = _conv_bn("stem", 7, 3, base)
    channels = base
    for stage, count in enumerate(blocks):
        width = base * 2**stage
        for block in range(count):
            name = f"stage{stage}.block{block}"
            shapes |= _conv_bn(f"{name}.conv1", 1, channels, width)
            shapes |= _conv_bn(f"{name}.conv2", 3, width, width)
            shapes |= _conv_bn(f"{name}.conv3", 1, width, 4 * width)
            if block == 0:
                shapes |= _conv_bn(f"{name}.projection", 1, channels, 4 * width)
            channels = 4 * width
    return shapes | {"fc.w": (channels, classes), "fc.b": (classes,)}


def transformer(layers=24, width=256, vocab=8192, context=512) -> dict:
    """Pre-norm decoder: embeddings, 12 leaves per layer, final norm, head."""
    shapes = {"embed": (vocab, width), "position": (context, width)}
    for i in range(layers):
        shapes |= _layer(f"layer{i:02d}", width)
    return shapes | {
        "final_norm.scale": (width,),
        "final_norm.bias": (width,),
        "head": (width, vocab),
    }


def small_leaves(count=1024) -> dict:
    cycle = ((32, 32), (32,), (64,), (16, 48))
    return {f"leaf{i:04d}": cycle[i % len(cycle)] for i in range(count)}


def num_parameters(shapes: dict) -> int:
    return sum(math.prod(s) for s in shapes.values())


def make_tree(shapes: dict, seed: int, scale: float) -> dict:
    """Normal random float32 arrays of the given shapes, times ``scale``.

    Drawn with NumPy: JAX would compile a sampler for every distinct shape.
    """
    rng = np.random.default_rng(seed)
    return {
        name: jnp.asarray(scale * rng.standard_normal(shape, np.float32))
        for name, shape in shapes.items()
    }


def abstract_tree(shapes: dict) -> dict:
    return {name: jax.ShapeDtypeStruct(s, jnp.float32) for name, s in shapes.items()}


def _first(shapes: dict, count: int) -> dict:
    return dict(list(shapes.items())[:count])


def _conv_bn(name, kernel, inputs, outputs) -> dict:
    return {
        f"{name}.w": (kernel, kernel, inputs, outputs),
        f"{name}.bn.scale": (outputs,),
        f"{name}.bn.bias": (outputs,),
    }


def _layer(name, width) -> dict:
    shapes = {}
    for norm in ("norm1", "norm2"):
        shapes |= {f"{name}.{norm}.scale": (width,), f"{name}.{norm}.bias": (width,)}
    dense = {"qkv": (width, 3 * width), "out": (width, width)}
    dense |= {"mlp_in": (width, 4 * width), "mlp_out": (4 * width, width)}
    for part, (n_in, n_out) in dense.items():
        shapes |= {f"{name}.{part}.w": (n_in, n_out), f"{name}.{part}.b": (n_out,)}
    return shapes
