"""genlab: config-driven experiment pipelines for the generative models of DLwP ch. 8."""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) buries the pipeline's own output;
# set before TensorFlow is first imported. A user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
