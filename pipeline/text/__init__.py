"""The text generator (DLwP §8.1): character-level text generation with an LSTM.

fetch -> vectorize -> train -> sample, configured by params.yaml's `text:` section (conf/text.yaml,
conf/text/corpus/, conf/text/model/), logged to the MLflow experiment `text.mlflow.experiment`.
"""
STAGES = ("fetch", "vectorize", "train", "sample")


def errors() -> tuple[type[Exception], ...]:
    """What the stages report as one `error:` line (bad input, config or store); anything else is a
    bug and keeps its traceback. (The model package imports Keras: only when asked.)"""
    from pipeline.download import FetchError
    from pipeline.text.model import ModelError
    from pipeline.text.sample import SampleError
    from pipeline.epochs import TrainError
    from pipeline.text.vectorize import VectorizeError

    return (FetchError, VectorizeError, TrainError, SampleError, ModelError)
