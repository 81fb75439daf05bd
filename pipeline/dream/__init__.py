"""DeepDream (DLwP §8.2): a photo's pixels pushed by gradient ascent to excite a pretrained
convnet's layers, octave by octave.

fetch -> dream, configured by params.yaml's `dream:` section (conf/dream.yaml), logged to the
MLflow experiment `dream.mlflow.experiment`.
"""
STAGES = ("fetch", "dream")


def errors() -> tuple[type[Exception], ...]:
    """What the stages report as one `error:` line (bad image, config, network or store)."""
    from pipeline.download import FetchError
    from pipeline.networks import NetworkError
    from pipeline.pictures import ImageError

    return (FetchError, NetworkError, ImageError)
