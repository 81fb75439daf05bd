"""The DCGAN of DLwP §8.5: the 1st edition's generator and discriminator (widths from config), trained
the keras-io way (`dcgan_overriding_train_step.py`): a `keras.Model` subclass whose `train_step`
takes one discriminator step on a batch of real and generated images, then one generator step on
fresh latent vectors, each with its own optimizer. Everything is `keras.ops`, so the model trains on
the TensorFlow and torch backends (each backend's own gradient: a GradientTape or autograd).

The book's labels are kept: the discriminator is trained to say 1 for a generated image and 0 for a
real one, with uniform noise added to the labels (`label_noise`); the generator is trained against
the "real" label. What is logged is the usual D: d_x = mean P(real) of real images, d_g_z = mean
P(real) of generated ones. Two changes from the book, both for correctness: its tanh output was
compared with data in [0, 1] (its known bug); here the data are scaled to [-1, 1] (`pixels`). And
the discriminator ends in a logit, not a sigmoid: the cross-entropy is then exact where a sigmoid
saturates (the same loss, computed stably).

An optional EMA of the generator's weights (keras-io `gan_ada.py`) is updated after each step; when
on, it is the generator that is scored and exported.
"""
from __future__ import annotations

import keras
from keras import layers, ops

SIDE = 32  # CIFAR-10 images are 32 x 32 RGB
SLOPE = 0.2  # LeakyReLU's negative slope, as keras-io's DCGAN (Keras 2's default alpha was 0.3)


def pixels(x):
    """uint8 images (what the train stage feeds: a quarter of float32's bytes) as floats in [-1, 1],
    the range of the generator's tanh."""
    if keras.backend.standardize_dtype(x.dtype) == "uint8":
        return ops.cast(x, "float32") / 127.5 - 1.0
    return x


def to_uint8(images):
    """Images in [-1, 1] (a numpy array) as uint8 RGB."""
    import numpy as np

    scaled = np.nan_to_num((np.asarray(images, np.float32) + 1.0) * 127.5)  # a diverged generator draws black, not garbage
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def build_generator(latent_dim: int, seed_channels: int, filters: int) -> keras.Model:
    """The book's generator: Dense to 16 x 16 x seed_channels, Conv k5, Conv2DTranspose k4 stride 2
    to 32 x 32, Conv k5 twice, Conv k7 to 3 channels with tanh (the book: 128 and 256)."""
    z = keras.Input(shape=(latent_dim,), name="z")
    x = layers.Dense(16 * 16 * seed_channels)(z)
    x = layers.LeakyReLU(SLOPE)(x)
    x = layers.Reshape((16, 16, seed_channels))(x)
    x = layers.LeakyReLU(SLOPE)(layers.Conv2D(filters, 5, padding="same")(x))
    x = layers.LeakyReLU(SLOPE)(layers.Conv2DTranspose(filters, 4, strides=2, padding="same")(x))
    x = layers.LeakyReLU(SLOPE)(layers.Conv2D(filters, 5, padding="same")(x))
    x = layers.LeakyReLU(SLOPE)(layers.Conv2D(filters, 5, padding="same")(x))
    return keras.Model(z, layers.Conv2D(3, 7, padding="same", activation="tanh", name="image")(x), name="generator")


def build_discriminator(filters: int, dropout: float) -> keras.Model:
    """The book's discriminator: Conv k3, then three Conv k4 stride 2, all with 'valid' padding as
    in the book (32 -> 30 -> 14 -> 6 -> 2), Flatten, Dropout, one output (a logit here)."""
    image = keras.Input(shape=(SIDE, SIDE, 3), name="image")
    x = layers.LeakyReLU(SLOPE)(layers.Conv2D(filters, 3)(image))
    for _ in range(3):
        x = layers.LeakyReLU(SLOPE)(layers.Conv2D(filters, 4, strides=2)(x))
    x = layers.Dropout(dropout)(layers.Flatten()(x))
    return keras.Model(image, layers.Dense(1, name="logit")(x), name="discriminator")


def bce_logits(labels, logits):
    """Mean binary cross-entropy of `labels` in [0, 1] given `logits`, the stable form
    max(l, 0) - l y + log(1 + exp(-|l|))."""
    return ops.mean(ops.relu(logits) - logits * labels + ops.log1p(ops.exp(-ops.abs(logits))))


@keras.saving.register_keras_serializable(package="genlab")
class GAN(keras.Model):
    def __init__(self, latent_dim=32, seed_channels=128, filters=256, d_filters=128, dropout=0.4, label_noise=0.05,
                 ema=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim, self.seed_channels, self.filters = int(latent_dim), int(seed_channels), int(filters)
        self.d_filters, self.dropout, self.label_noise = int(d_filters), float(dropout), float(label_noise)
        self.ema = None if ema is None else float(ema)
        self.generator = build_generator(self.latent_dim, self.seed_channels, self.filters)
        self.discriminator = build_discriminator(self.d_filters, self.dropout)
        self.ema_generator = None
        if self.ema is not None:
            self.ema_generator = build_generator(self.latent_dim, self.seed_channels, self.filters)
            self.ema_generator.name = "ema_generator"
            self.ema_generator.set_weights(self.generator.get_weights())
        self.noise = keras.random.SeedGenerator(seed)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("d_loss", "g_loss", "d_x", "d_g_z")}
        self.built = True

    def compile(self, d_optimizer, g_optimizer, **kwargs):
        super().compile(**kwargs)
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer
        # Built now, so that a checkpoint's optimizer variables (`optimizer_variables`) exist before the first step.
        self.d_optimizer.build(self.discriminator.trainable_weights)
        self.g_optimizer.build(self.generator.trainable_weights)

    def get_compile_config(self):
        return None  # two optimizers that compile(**config) cannot rebuild: the train stage compiles a loaded GAN itself

    def reseed(self, seed: int, stream: int) -> None:
        """Start the latent and label noise and the dropout masks at a state of (`seed`, `stream`)
        only: a resumed run draws what the uninterrupted one drew (seed states are not saved with
        the weights)."""
        self.noise.state.assign(ops.convert_to_tensor([seed, stream * 1_000_000], dtype=self.noise.state.dtype))
        for i, layer in enumerate(self.discriminator.layers):  # dropout masks: their own seeds, reset too
            if getattr(layer, "seed_generator", None) is not None:  # a Dropout of rate 0 has none
                layer.seed_generator.state.assign(
                    ops.convert_to_tensor([seed + 1 + i, stream * 1_000_000], dtype=layer.seed_generator.state.dtype))

    @property
    def metrics(self):
        return list(self.trackers.values())

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim, "seed_channels": self.seed_channels,
                "filters": self.filters, "d_filters": self.d_filters, "dropout": self.dropout,
                "label_noise": self.label_noise, "ema": self.ema}

    def scored_generator(self) -> keras.Model:
        """The generator that is scored and exported: the EMA's when on."""
        return self.ema_generator if self.ema_generator is not None else self.generator

    def call(self, z, training=False):
        return self.scored_generator()(z, training=training)

    def optimizer_variables(self) -> list:
        return list(self.d_optimizer.variables) + list(self.g_optimizer.variables)

    # The two losses, each a function of its own network's weights.
    def d_losses(self, real, training=True):
        n = ops.shape(real)[0]
        fake = self.generator(keras.random.normal((n, self.latent_dim), seed=self.noise), training=training)
        fake = ops.stop_gradient(fake)  # the discriminator's step: no gradient through the generator
        logits = self.discriminator(ops.concatenate([fake, real], axis=0), training=training)
        labels = ops.concatenate([ops.ones((n, 1)), ops.zeros((n, 1))], axis=0)  # the book's: 1 generated, 0 real
        labels = labels + self.label_noise * keras.random.uniform(ops.shape(labels), seed=self.noise)
        p_real = 1.0 - ops.sigmoid(logits)
        return bce_logits(labels, logits), ops.mean(p_real[n:]), ops.mean(p_real[:n])

    def g_loss(self, n, training=True):
        fake = self.generator(keras.random.normal((n, self.latent_dim), seed=self.noise), training=training)
        return bce_logits(ops.zeros((n, 1)), self.discriminator(fake, training=training))  # "real", to fool D

    def _step(self, loss_fn, weights, optimizer):
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                out = loss_fn()
            grads = tape.gradient(out[0], weights)
        elif backend == "torch":
            self.zero_grad()
            out = loss_fn()
            out[0].backward()
            grads = [v.value.grad for v in weights]
        else:
            raise NotImplementedError(f"the GAN trains on the tensorflow and torch backends, not {backend}")
        optimizer.apply(grads, weights)
        return out

    def train_step(self, data):
        real = pixels(data[0] if isinstance(data, tuple) else data)
        n = ops.shape(real)[0]
        d_loss, d_x, d_g_z = self._step(lambda: self.d_losses(real), self.discriminator.trainable_weights, self.d_optimizer)
        (g_loss,) = self._step(lambda: (self.g_loss(n),), self.generator.trainable_weights, self.g_optimizer)
        if self.ema_generator is not None:
            for w, e in zip(self.generator.weights, self.ema_generator.weights):
                e.assign(self.ema * e + (1.0 - self.ema) * w)
        for tracker, value in zip(self.trackers.values(), (d_loss, g_loss, d_x, d_g_z)):
            tracker.update_state(value)
        return {name: t.result() for name, t in self.trackers.items()}

    def generate(self, z, batch: int = 250):
        """uint8 images of the latent vectors `z` (numpy), from the scored generator."""
        import numpy as np

        g = self.scored_generator()
        return np.concatenate([to_uint8(ops.convert_to_numpy(g(z[i:i + batch]))) for i in range(0, len(z), batch)])
