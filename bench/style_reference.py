"""REFERENCE, not genlab: keras-io's neural style transfer example
(`examples/generative/neural_style_transfer.py`, the 2nd edition's) re-stated here as it runs
(written for this benchmark, not copied): a feature extractor with every layer's output in a dict,
a loss that runs the photo, the style image and the combination through the network as one batch
of three at every step, the same Gram matrix, content, style and total-variation formulas, a
`tf.function` for the loss and its gradient, and SGD with an exponentially decayed learning rate
applied to a `tf.Variable` in a Python loop. The network and the images are passed in, already in
the network's input space (the benchmark gives both sides the same offline VGG16 and arrays).
"""
from __future__ import annotations

CONTENT_LAYER = "block5_conv2"
STYLE_LAYERS = ["block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1"]


def make(model, img_nrows: int, img_ncols: int, content_weight: float, style_weight: float, total_variation_weight: float):
    """compute_loss_and_grads(combination, base, style) as keras-io writes it."""
    import keras
    import tensorflow as tf

    outputs_dict = dict([(layer.name, layer.output) for layer in model.layers])
    feature_extractor = keras.Model(inputs=model.inputs, outputs=outputs_dict)

    def gram_matrix(x):
        x = tf.transpose(x, (2, 0, 1))
        features = tf.reshape(x, (tf.shape(x)[0], -1))
        return tf.matmul(features, tf.transpose(features))

    def style_loss(style, combination):
        S = gram_matrix(style)
        C = gram_matrix(combination)
        channels = 3
        size = img_nrows * img_ncols
        return tf.reduce_sum(tf.square(S - C)) / (4.0 * (channels ** 2) * (size ** 2))

    def content_loss(base, combination):
        return tf.reduce_sum(tf.square(combination - base))

    def total_variation_loss(x):
        a = tf.square(x[:, : img_nrows - 1, : img_ncols - 1, :] - x[:, 1:, : img_ncols - 1, :])
        b = tf.square(x[:, : img_nrows - 1, : img_ncols - 1, :] - x[:, : img_nrows - 1, 1:, :])
        return tf.reduce_sum(tf.pow(a + b, 1.25))

    def compute_loss(combination_image, base_image, style_reference_image):
        input_tensor = tf.concat([base_image, style_reference_image, combination_image], axis=0)
        features = feature_extractor(input_tensor)
        loss = tf.zeros(shape=())
        layer_features = features[CONTENT_LAYER]
        base_image_features = layer_features[0, :, :, :]
        combination_features = layer_features[2, :, :, :]
        loss = loss + content_weight * content_loss(base_image_features, combination_features)
        for layer_name in STYLE_LAYERS:
            layer_features = features[layer_name]
            style_reference_features = layer_features[1, :, :, :]
            combination_features = layer_features[2, :, :, :]
            sl = style_loss(style_reference_features, combination_features)
            loss += (style_weight / len(STYLE_LAYERS)) * sl
        loss += total_variation_weight * total_variation_loss(combination_image)
        return loss

    @tf.function
    def compute_loss_and_grads(combination_image, base_image, style_reference_image):
        with tf.GradientTape() as tape:
            loss = compute_loss(combination_image, base_image, style_reference_image)
        grads = tape.gradient(loss, combination_image)
        return loss, grads

    return compute_loss_and_grads


def transfer(compute_loss_and_grads, base_image, style_reference_image, iterations: int, on_iteration=lambda i, loss: None):
    """keras-io's loop: SGD(ExponentialDecay(100, 100, 0.96)) on a tf.Variable for `iterations`
    steps; the combination image it ends with."""
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.SGD(
        keras.optimizers.schedules.ExponentialDecay(initial_learning_rate=100.0, decay_steps=100, decay_rate=0.96))
    combination_image = tf.Variable(base_image)
    for i in range(1, iterations + 1):
        loss, grads = compute_loss_and_grads(combination_image, base_image, style_reference_image)
        optimizer.apply_gradients([(grads, combination_image)])
        on_iteration(i, loss)
    return combination_image
