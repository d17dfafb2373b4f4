"""Adam as one fused kernel per weight.

Keras 3's Adam issues about ten element-wise ops per weight; for the 63M weights of ResNet-101
that makes a CPU training step 8-12% slower (bench/train_monuseg.py). TensorFlow's
ResourceApplyAdam kernel (CPU and GPU) does the same update in one pass. The update is
Keras's, to float rounding:

    alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
    m = beta_1 m + (1 - beta_1) g;  v = beta_2 v + (1 - beta_2) g^2
    w = w - alpha m / (sqrt(v) + epsilon)

Optimizer state is not saved (checkpoints hold weights only, in the Matterport layout), so
nothing depends on Keras's slot-variable names.
"""
from __future__ import annotations

import tensorflow as tf


def _tf_variable(variable) -> tf.Variable:
    """The tf.Variable behind a Keras 3 variable (or the variable itself)."""
    return variable if isinstance(variable, tf.Variable) else variable.value


class FusedAdam:
    """Adam with Keras's defaults (beta_1 0.9, beta_2 0.999, epsilon 1e-7), no clipping."""

    def __init__(self, learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7):
        self.learning_rate = float(learning_rate)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.iterations = None
        self._slots: dict[int, tuple] = {}

    def build(self, variables) -> None:
        """Create the moment slots (zeros) of these weights and the step counter."""
        if self.iterations is None:
            self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        for variable in variables:
            value = _tf_variable(variable)   # kept in the slots, so its id stays unique
            if id(value) not in self._slots:
                self._slots[id(value)] = (
                    value,
                    tf.Variable(tf.zeros_like(value), trainable=False, name="m"),
                    tf.Variable(tf.zeros_like(value), trainable=False, name="v"))

    def apply_gradients(self, grads_and_vars) -> None:
        """One Adam step for (gradient, weight) pairs of weights given to `build`."""
        step = tf.cast(self.iterations.assign_add(1), tf.float32)
        beta_1 = tf.constant(self.beta_1, tf.float32)
        beta_2 = tf.constant(self.beta_2, tf.float32)
        beta_1_power, beta_2_power = tf.pow(beta_1, step), tf.pow(beta_2, step)
        learning_rate = tf.constant(self.learning_rate, tf.float32)
        epsilon = tf.constant(self.epsilon, tf.float32)
        for grad, variable in grads_and_vars:
            try:
                value, m, v = self._slots[id(_tf_variable(variable))]
            except KeyError:
                raise ValueError(f"weight {variable.name} was not given to build()") from None
            tf.raw_ops.ResourceApplyAdam(
                var=value.handle, m=m.handle, v=v.handle, beta1_power=beta_1_power,
                beta2_power=beta_2_power, lr=learning_rate, beta1=beta_1, beta2=beta_2,
                epsilon=epsilon, grad=tf.convert_to_tensor(grad, tf.float32))
