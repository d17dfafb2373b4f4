"""The fused Adam used for Mask R-CNN+ training makes Keras's Adam updates."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from nucseg.mrcnn.optim import FusedAdam


def _weights(seed):
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.standard_normal(shape).astype(np.float32))
            for shape in [(3, 3, 4, 8), (8,), (16, 2)]]


def test_fused_adam_matches_keras_adam_over_several_steps():
    reference, fused = _weights(0), _weights(0)
    keras_adam = keras.optimizers.Adam(learning_rate=0.01)
    keras_adam.build(reference)
    adam = FusedAdam(0.01)
    adam.build(fused)
    rng = np.random.default_rng(1)

    @tf.function       # as in training: weights captured, gradients passed
    def fused_step(grads):
        adam.apply_gradients(zip(grads, fused))

    for step in range(5):
        grads = [tf.constant(rng.standard_normal(w.shape).astype(np.float32) * (step + 1))
                 for w in reference]
        keras_adam.apply_gradients(zip(grads, reference))
        fused_step(grads)
    for ref, got in zip(reference, fused):
        np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
    moved = np.abs(fused[0].numpy() - _weights(0)[0].numpy()).max()
    assert moved > 0.01           # five steps of ~lr each really moved the weights


def test_fused_adam_refuses_a_weight_it_was_not_built_for():
    adam = FusedAdam(0.01)
    adam.build(_weights(0)[:1])
    stranger = keras.Variable(np.zeros(3, np.float32), name="stranger")
    with pytest.raises(ValueError, match="stranger"):
        adam.apply_gradients([(tf.ones(3), stranger)])
