"""Neural style transfer (DLwP §8.3): a photo's pixels moved until a pretrained convnet sees the
photo's content in one layer and a painting's style (its layers' Gram matrices) in others.

fetch -> transfer, configured by params.yaml's `style:` section (conf/style.yaml), logged to the
MLflow experiment `style.mlflow.experiment`.
"""
STAGES = ("fetch", "transfer")


def errors() -> tuple[type[Exception], ...]:
    """What the stages report as one `error:` line (bad image, config, network or store)."""
    from pipeline.download import FetchError
    from pipeline.networks import NetworkError
    from pipeline.pictures import ImageError

    return (FetchError, NetworkError, ImageError)
