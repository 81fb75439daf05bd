"""The variational autoencoder (DLwP §8.4) on MNIST.

fetch -> train -> sample, configured by params.yaml's `vae:` section (conf/vae.yaml), logged to
the MLflow experiment `vae.mlflow.experiment`.
"""
STAGES = ("fetch", "train", "sample")


def errors() -> tuple[type[Exception], ...]:
    """What the stages report as one `error:` line (bad data, config or store)."""
    from pipeline.download import FetchError
    from pipeline.epochs import TrainError
    from pipeline.vae.sample import SampleError

    return (FetchError, TrainError, SampleError)
