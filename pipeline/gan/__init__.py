"""The DCGAN (DLwP §8.5) on CIFAR-10's frogs.

fetch -> train -> sample, configured by params.yaml's `gan:` section (conf/gan.yaml), logged to
the MLflow experiment `gan.mlflow.experiment`.
"""
STAGES = ("fetch", "train", "sample")


def errors() -> tuple[type[Exception], ...]:
    """What the stages report as one `error:` line (bad data, config, network or store)."""
    from pipeline.download import FetchError
    from pipeline.epochs import TrainError
    from pipeline.gan.sample import SampleError
    from pipeline.networks import NetworkError

    return (FetchError, TrainError, NetworkError, SampleError)
