"""REFERENCE, not genlab: the DCGAN training loop of "Deep Learning with Python" 1st edition §8.5,
re-stated here as it runs (written for this benchmark, not copied): a discriminator compiled on
its own, frozen inside a combined `gan` model compiled for the generator's step, and a Python loop
of `generator.predict` and two `train_on_batch` calls per step over the frogs in order, with the
book's label noise and its RMSprop settings. Two departures, each needed to run at all today: the
data are scaled to [-1, 1] (the book's known tanh bug), and Keras 3 reads `trainable` when a model
trains rather than when it is compiled, so the discriminator is unfrozen for its own step and
frozen for the generator's (the book relied on Keras 2's compile-time freeze to get the same).
The networks are genlab's builders (the book's layers, widths from the arguments), so both sides
run the same model.
"""
from __future__ import annotations

import numpy as np


def build(latent_dim: int, seed_channels: int, filters: int, d_filters: int, dropout: float):
    import keras

    from pipeline.gan.model import build_discriminator, build_generator

    generator = build_generator(latent_dim, seed_channels, filters)
    body = build_discriminator(d_filters, dropout)
    image = keras.Input(shape=(32, 32, 3))
    discriminator = keras.Model(image, keras.layers.Activation("sigmoid")(body(image)), name="book_discriminator")
    discriminator.compile(optimizer=keras.optimizers.RMSprop(learning_rate=0.0008, clipvalue=1.0), loss="binary_crossentropy")
    discriminator.trainable = False
    z = keras.Input(shape=(latent_dim,))
    gan = keras.Model(z, discriminator(generator(z)))
    gan.compile(optimizer=keras.optimizers.RMSprop(learning_rate=0.0004, clipvalue=1.0), loss="binary_crossentropy")
    return generator, discriminator, gan


def train(x_train: np.ndarray, steps: int, batch_size: int, latent_dim: int, models, on_step=lambda step, d, a: None):
    """The book's loop; `x_train` in [-1, 1]. `on_step(step, d_loss, a_loss)` after each step."""
    generator, discriminator, gan = models
    start = 0
    for step in range(steps):
        random_latent_vectors = np.random.normal(size=(batch_size, latent_dim))
        generated_images = generator.predict(random_latent_vectors, verbose=0)
        stop = start + batch_size
        real_images = x_train[start:stop]
        combined_images = np.concatenate([generated_images, real_images])
        labels = np.concatenate([np.ones((batch_size, 1)), np.zeros((batch_size, 1))])
        labels += 0.05 * np.random.random(labels.shape)
        discriminator.trainable = True
        d_loss = discriminator.train_on_batch(combined_images, labels)
        discriminator.trainable = False
        random_latent_vectors = np.random.normal(size=(batch_size, latent_dim))
        misleading_targets = np.zeros((batch_size, 1))
        a_loss = gan.train_on_batch(random_latent_vectors, misleading_targets)
        start += batch_size
        if start > len(x_train) - batch_size:
            start = 0
        on_step(step, d_loss, a_loss)
