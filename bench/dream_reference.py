"""REFERENCE, not genlab: keras-io's DeepDream example (`examples/generative/deep_dream.py`, 2nd
edition ch. 12) re-stated here as it runs (written for this benchmark, not copied): a dict-output
feature extractor, a loss of each layer's sum of squares over its 2-pixel-trimmed map divided by the
map's size, a `tf.function` step of l2-normalised gradient ascent, a Python loop of steps with
`max_loss`, and the octave loop with detail reinjection through `tf.image.resize`. The network is
passed in (the benchmark gives both sides the same offline VGG16), and the image is in that
network's input space, as keras-io feeds InceptionV3's.
"""
from __future__ import annotations


def make(feature_extractor, layer_settings: dict):
    import tensorflow as tf

    def compute_loss(input_image):
        features = feature_extractor(input_image)
        loss = tf.zeros(shape=())
        for name in features.keys():
            coeff = layer_settings[name]
            activation = features[name]
            scaling = tf.reduce_prod(tf.cast(tf.shape(activation), "float32"))
            loss += coeff * tf.reduce_sum(tf.square(activation[:, 2:-2, 2:-2, :])) / scaling
        return loss

    @tf.function
    def gradient_ascent_step(img, learning_rate):
        with tf.GradientTape() as tape:
            tape.watch(img)
            loss = compute_loss(img)
        grads = tape.gradient(loss, img)
        grads = tf.math.l2_normalize(grads)
        img += learning_rate * grads
        return loss, img

    def gradient_ascent_loop(img, iterations, learning_rate, max_loss=None, on_step=lambda: None):
        for i in range(iterations):
            loss, img = gradient_ascent_step(img, learning_rate)
            on_step()
            if max_loss is not None and loss > max_loss:
                break
        return img

    return gradient_ascent_loop


def dream(original_img, loop, num_octave: int, octave_scale: float, iterations: int, step: float, max_loss, on_step=lambda: None):
    import tensorflow as tf

    original_shape = original_img.shape[1:3]
    successive_shapes = [original_shape]
    for i in range(1, num_octave):
        shape = tuple([int(dim / (octave_scale ** i)) for dim in original_shape])
        successive_shapes.append(shape)
    successive_shapes = successive_shapes[::-1]
    shrunk_original_img = tf.image.resize(original_img, successive_shapes[0])
    img = tf.identity(original_img)
    for shape in successive_shapes:
        img = tf.image.resize(img, shape)
        img = loop(img, iterations=iterations, learning_rate=step, max_loss=max_loss, on_step=on_step)
        upscaled_shrunk_original_img = tf.image.resize(shrunk_original_img, shape)
        same_size_original = tf.image.resize(original_img, shape)
        lost_detail = same_size_original - upscaled_shrunk_original_img
        img += lost_detail
        shrunk_original_img = tf.image.resize(original_img, shape)
    return img
