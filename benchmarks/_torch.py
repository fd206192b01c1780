"""``torch.optim.RMSprop`` contenders, when PyTorch is installed.

PyTorch runs on CUDA when available, else on the CPU with one thread per
usable core. Only ``.step()`` is timed, on tensors whose ``.grad`` is set.
"""

import importlib.util

import numpy as np

from benchmarks import _machine
from benchmarks import _timing

AVAILABLE = importlib.util.find_spec("torch") is not None


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def rmsprop_contender(name, params, grads, foreach: bool, kwargs: dict):
    """RMSprop on copies of the JAX ``params`` trees, gradients ``grads``."""
    import torch

    torch.set_num_threads(_machine.usable_cores())
    tensors = [_tensor(p).requires_grad_() for p in params]
    for tensor, grad in zip(tensors, grads):
        tensor.grad = _tensor(grad)
    optimizer = torch.optim.RMSprop(tensors, foreach=foreach, **kwargs)
    synchronize = torch.cuda.synchronize if device() == "cuda" else lambda: None

    def run(steps):
        for _ in range(steps):
            optimizer.step()
        synchronize()

    return _timing.Contender(name, run)


def _tensor(array):
    import torch

    return torch.tensor(np.array(array), device=device())
