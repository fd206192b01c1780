"""An independent float64 NumPy model of RMSprop, written from the maths.

It shares no code with ``optax_rmsprop``: one loop over plain arrays, each
line one equation of the docstrings (Hinton 2012; Graves 2013 for centered).
"""

import numpy as np


class NumpyRmsprop:
    """RMSprop on a list of float64 (or complex128) arrays.

    ``step(grads)`` returns the updates to *add* to the parameters, i.e.
    ``-lr * ...`` as ``optax.rmsprop`` produces them. Weight decay is
    decoupled (``u + weight_decay * params`` before the learning rate), and
    ``weight_decay_mask`` is a list of booleans, one per array.
    """

    def __init__(
        self,
        shapes,
        learning_rate,
        decay=0.9,
        eps=1e-8,
        initial_scale=0.0,
        eps_in_sqrt=True,
        centered=False,
        momentum=None,
        nesterov=False,
        bias_correction=False,
        weight_decay=0.0,
        complex_params=False,
        weight_decay_mask=None,
    ):
        self.lr = (
            learning_rate if callable(learning_rate) else (lambda t: learning_rate)
        )
        self.decay, self.eps, self.eps_in_sqrt = decay, eps, eps_in_sqrt
        self.centered, self.momentum, self.nesterov = centered, momentum, nesterov
        self.bias_correction, self.weight_decay = bias_correction, weight_decay
        # One bool per array: which ones decay (None: all), as optax's mask.
        self.decays = (
            [True] * len(shapes)
            if weight_decay_mask is None
            else list(weight_decay_mask)
        )
        mean_dtype = np.complex128 if complex_params else np.float64
        self.nu = [np.full(s, initial_scale, np.float64) for s in shapes]
        self.mu = [np.zeros(s, mean_dtype) for s in shapes]
        self.trace = [np.zeros(s, mean_dtype) for s in shapes]
        self.t = 0

    def step(self, grads, params=None):
        lr = self.lr(self.t)  # optax's schedules see the count before the step.
        self.t += 1
        out = []
        for i, g in enumerate(grads):
            g = np.asarray(g, np.complex128 if np.iscomplexobj(g) else np.float64)
            self.nu[i] = self.decay * self.nu[i] + (1 - self.decay) * np.abs(g) ** 2
            self.mu[i] = self.decay * self.mu[i] + (1 - self.decay) * g
            correction = 1 - self.decay**self.t if self.bias_correction else 1.0
            variance = self.nu[i] / correction
            if self.centered:
                variance = np.maximum(
                    variance - np.abs(self.mu[i] / correction) ** 2, 0
                )
            if self.eps_in_sqrt:
                u = g / np.sqrt(variance + self.eps)
            else:
                u = g / (np.sqrt(variance) + self.eps)
            u = np.where(g == 0, 0, u)
            if self.weight_decay and self.decays[i]:
                u = u + self.weight_decay * np.asarray(params[i], np.float64)
            d = -lr * u
            if self.momentum is not None:
                self.trace[i] = d + self.momentum * self.trace[i]
                d = (
                    d + self.momentum * self.trace[i]
                    if self.nesterov
                    else self.trace[i]
                )
            out.append(d)
        return out
