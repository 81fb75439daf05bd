"""The VAE of DLwP §8.4 (2nd edition ch. 12, keras-io `vae.py`): a convolutional encoder to a
Gaussian posterior q(z|x) = N(mean, exp(log_var)), a decoder to Bernoulli logits per pixel, trained
on the negative ELBO: the reconstruction's binary cross-entropy summed over the 784 pixels plus
beta times KL(q(z|x) || N(0, I)), in nats per image.

A `keras.Model` subclass with `train_step` and `test_step`, the keras-io way; every loss is
`keras.ops`, so the model runs on the TensorFlow and torch backends (the gradient is each
backend's own: a GradientTape or autograd). The decoder ends in logits, not the book's sigmoid:
the cross-entropy is then computed from logits, exact where a sigmoid output saturates at 0 or 1.
"""
from __future__ import annotations

import math

import keras
from keras import layers, ops

SIDE = 28  # MNIST digits are 28 x 28, one channel
LOG_2PI = math.log(2 * math.pi)


def pixels(x):
    """Digits as float pixel values in [0, 1]: uint8 digits (0-255, what the train stage feeds, a
    quarter of the float32 bytes through the input pipeline) are scaled here, on the device."""
    if keras.backend.standardize_dtype(x.dtype) == "uint8":
        return ops.cast(x, "float32") / 255.0
    return x


def reconstruction_nats(x, logits):
    """-log p(x|z) per image: Bernoulli cross-entropy of the pixels `x` (in [0, 1]) given the
    decoder's `logits`, summed over the pixels (nats per image). The stable form of
    -[x log sigmoid(l) + (1 - x) log(1 - sigmoid(l))] = max(l, 0) - l x + log(1 + exp(-|l|))."""
    per_pixel = ops.relu(logits) - logits * x + ops.log1p(ops.exp(-ops.abs(logits)))
    return ops.sum(ops.reshape(per_pixel, (ops.shape(per_pixel)[0], -1)), axis=1)


def kl_divergence(mean, log_var):
    """KL(N(mean, exp(log_var)) || N(0, I)) per row, in nats: -1/2 sum(1 + log_var - mean^2 - exp(log_var))."""
    return -0.5 * ops.sum(1.0 + log_var - ops.square(mean) - ops.exp(log_var), axis=1)


def build_encoder(filters: list[int], dense: int, latent_dim: int) -> keras.Model:
    x = inputs = keras.Input(shape=(SIDE, SIDE, 1), name="digit")
    for f in filters:
        x = layers.Conv2D(f, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(dense, activation="relu")(x)
    return keras.Model(inputs, [layers.Dense(latent_dim, name="z_mean")(x), layers.Dense(latent_dim, name="z_log_var")(x)],
                       name="encoder")


def build_decoder(filters: list[int], latent_dim: int) -> keras.Model:
    side = SIDE // 2 ** len(filters)
    z = keras.Input(shape=(latent_dim,), name="z")
    x = layers.Dense(side * side * filters[-1], activation="relu")(z)
    x = layers.Reshape((side, side, filters[-1]))(x)
    for f in reversed(filters):
        x = layers.Conv2DTranspose(f, 3, strides=2, padding="same", activation="relu")(x)
    return keras.Model(z, layers.Conv2DTranspose(1, 3, padding="same", name="logits")(x), name="decoder")


@keras.saving.register_keras_serializable(package="genlab")
class VAE(keras.Model):
    def __init__(self, filters=(32, 64), dense=16, latent_dim=2, beta=1.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.dense, self.latent_dim, self.beta = list(filters), int(dense), int(latent_dim), float(beta)
        self.encoder = build_encoder(self.filters, self.dense, self.latent_dim)
        self.decoder = build_decoder(self.filters, self.latent_dim)
        self.noise = keras.random.SeedGenerator(seed)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", "reconstruction_loss", "kl_loss")}
        self.built = True  # its layers are built above: saving and loading (optimizer included) need no first call

    def reseed(self, seed: int, stream: int) -> None:
        """Start the noise of `sample_z` and `bounds` at a state that depends on `seed` and `stream`
        (an epoch) only: a resumed run then draws what the uninterrupted one drew (the seed's state
        is not one of the model's weights, so a checkpoint does not keep it)."""
        self.noise.state.assign(ops.convert_to_tensor([seed, stream * 1_000_000], dtype=self.noise.state.dtype))

    @property
    def metrics(self):
        return list(self.trackers.values())

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "dense": self.dense, "latent_dim": self.latent_dim,
                "beta": self.beta}

    def call(self, x, training=False):
        """Reconstruction probabilities of the digits `x` (through each one's posterior mean)."""
        mean, _ = self.encoder(pixels(x), training=training)
        return ops.sigmoid(self.decoder(mean, training=training))

    def sample_z(self, mean, log_var):
        """The reparameterisation trick: z = mean + sigma * eps, eps ~ N(0, I) from the model's seed."""
        return mean + ops.exp(0.5 * log_var) * keras.random.normal(ops.shape(mean), seed=self.noise)

    def losses_of(self, x, training=False):
        """(total, reconstruction, KL) means over the batch `x`, in nats per image."""
        x = pixels(x)
        mean, log_var = self.encoder(x, training=training)
        rec = ops.mean(reconstruction_nats(x, self.decoder(self.sample_z(mean, log_var), training=training)))
        kl = ops.mean(kl_divergence(mean, log_var))
        return rec + self.beta * kl, rec, kl

    def _report(self, total, rec, kl):
        for tracker, value in zip(self.trackers.values(), (total, rec, kl)):
            tracker.update_state(value)
        return {name: t.result() for name, t in self.trackers.items()}

    def train_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                total, rec, kl = self.losses_of(x, training=True)
            grads = tape.gradient(total, self.trainable_weights)
        elif backend == "torch":
            self.zero_grad()
            total, rec, kl = self.losses_of(x, training=True)
            total.backward()
            grads = [v.value.grad for v in self.trainable_weights]
        else:
            raise NotImplementedError(f"the VAE trains on the tensorflow and torch backends, not {backend}")
        self.optimizer.apply(grads, self.trainable_weights)
        return self._report(total, rec, kl)

    def test_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        return self._report(*self.losses_of(x))

    def bounds(self, x, k: int):
        """Per image of `x`: the negative ELBO and the importance-weighted bound (IWAE, Burda et al.
        2016) on -log p(x), both from the same `k` posterior samples, in nats:
          -ELBO = KL(q || p(z)) - mean_k log p(x|z_k)
          -IWAE = -(logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log k)  <=  -ELBO."""
        x = pixels(x)
        mean, log_var = self.encoder(x)
        n, d = ops.shape(mean)[0], self.latent_dim
        eps = keras.random.normal((n, k, d), seed=self.noise)
        z = ops.expand_dims(mean, 1) + ops.exp(0.5 * ops.expand_dims(log_var, 1)) * eps
        logits = self.decoder(ops.reshape(z, (n * k, d)))
        repeated = ops.reshape(ops.repeat(ops.expand_dims(x, 1), k, axis=1), (n * k, SIDE, SIDE, 1))
        log_px = -ops.reshape(reconstruction_nats(repeated, logits), (n, k))
        log_pz = -0.5 * ops.sum(ops.square(z) + LOG_2PI, axis=2)
        log_qz = -0.5 * ops.sum(ops.square(eps) + LOG_2PI + ops.expand_dims(log_var, 1), axis=2)
        iwae = ops.logsumexp(log_px + log_pz - log_qz, axis=1) - math.log(k)
        return kl_divergence(mean, log_var) - ops.mean(log_px, axis=1), -iwae

    def decode(self, z):
        """Pixel probabilities of the codes `z`."""
        return ops.sigmoid(self.decoder(z))
