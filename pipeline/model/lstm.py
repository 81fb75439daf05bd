"""The book's model (§8.1): one LSTM layer over one-hot characters, then a softmax."""
from __future__ import annotations

import keras


def one_hot(vocab_size: int) -> keras.layers.Layer:
    """The book's one-hot input as a frozen identity embedding: the same numbers, computed inside
    the model from ids, and loadable in Keras safe mode."""
    return keras.layers.Embedding(vocab_size, vocab_size, embeddings_initializer="identity", trainable=False,
                                  name="one_hot")


@keras.saving.register_keras_serializable(package="genlab")
class OneHotLSTM(keras.layers.LSTM):
    """keras.layers.LSTM for one-hot inputs, as the train stage builds it on a CPU: the input's
    product with the kernel, x_t @ kernel, is the kernel's row of x_t's id, so it is gathered
    instead of multiplied (vocab_size x 4 units multiply-adds fewer per character, forward and
    backward), in a loop that does nothing else. The same weights and the same numbers: the
    exported model uses keras.layers.LSTM. With a GPU, a mask, dropout or another backend, it is
    keras.layers.LSTM (cuDNN where Keras picks it)."""

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if (keras.backend.backend() != "tensorflow" or mask is not None or self.go_backwards or self.unroll
                or self.dropout or self.recurrent_dropout or self.use_cudnn is True or _has_gpu()):
            return super().inner_loop(sequences, initial_state, mask, training)
        import tensorflow as tf

        cell = self.cell
        ids = tf.transpose(tf.argmax(sequences, axis=-1, output_type=tf.int32))  # (time, batch): one-hot rows back to ids
        steps = tf.shape(ids)[0]
        act, gate = cell.activation, cell.recurrent_activation
        bias = cell.bias if cell.use_bias else 0.0
        def body(t, h, c, *outputs):
            z = tf.gather(cell.kernel, ids[t]) + tf.matmul(h, cell.recurrent_kernel) + bias
            i, f, g, o = tf.split(z, 4, axis=1)
            c = gate(f) * c + gate(i) * act(g)
            h = gate(o) * act(c)
            return (t + 1, h, c, *(a.write(t, h) for a in outputs))

        outputs = [tf.TensorArray(sequences.dtype, size=steps)] if self.return_sequences else []
        _, h, c, *outputs = tf.while_loop(lambda t, *_: t < steps, body, (0, *initial_state, *outputs),
                                          maximum_iterations=steps)  # XLA (jit_compile) needs the bound
        sequence = tf.transpose(outputs[0].stack(), [1, 0, 2]) if outputs else h[:, None]
        return h, sequence, [h, c]


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def build(vocab_size: int, units: int, sequence: bool = False, training: bool = False) -> keras.Model:
    """`sequence`: predict after every position, (batch, time, vocab), for training on all
    targets; the same weights as the model that predicts after the last one. `training`: with
    `OneHotLSTM`, for the train stage (the same weights and numbers, faster on a CPU)."""
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    layer = (OneHotLSTM if training else keras.layers.LSTM)(units, return_sequences=sequence, name="lstm")
    probs = keras.layers.Dense(vocab_size, activation="softmax", name="next_char")(layer(one_hot(vocab_size)(ids)))
    return keras.Model(ids, probs, name="lstm")
