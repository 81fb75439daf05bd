"""The trained model as an MLflow pyfunc "text generator", for `mlflow.pyfunc.load_model` and
`mlflow models serve`.

Input: a column of prompts (strings). Params, with defaults in the signature: temperature, length,
seed, mode. Output: one generated text per prompt, the continuation without the prompt. Each
prompt gets its own random generator seeded from (seed, its position), so a batch of prompts gives
the same texts as the prompts one at a time. The train stage logs it with `log(...)` beside the
plain Keras model; its artifacts are the same model.keras and meta.json.
"""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np

NAME = "text_generator"  # runs:/<run_id>/text_generator
PARAMS = {"temperature": 0.5, "length": 200, "seed": 1337, "mode": "window"}
# A request's `length` above this is refused (HTTP 400): generation runs to the end whatever the
# server's timeout, so an unbounded length kept a worker busy for minutes after the client gave up.
# The model carries its own in meta.json (`mlflow.serve_max_length` when it was trained); this is for older ones.
MAX_LENGTH = 10_000


def _prompts(model_input) -> list[str]:
    """A column of prompts, however the caller or the scoring server shaped it."""
    if hasattr(model_input, "columns"):  # a DataFrame: its first (or only) column
        model_input = model_input.iloc[:, 0]
    if isinstance(model_input, str):
        model_input = [model_input]
    return ["" if p is None else str(p) for p in np.asarray(model_input, dtype=object).reshape(-1).tolist()]


class TextGenerator(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from pipeline.machine import import_tensorflow

        import_tensorflow()  # before Keras: the server's log without TensorFlow's start-up lines
        from pipeline.text import model as models
        from pipeline.text.generator import for_model

        model, self.meta = models.load(Path(context.artifacts["model"]).parent)
        self.generator = for_model(model, self.meta["maxlen"])
        self.max_length = int(self.meta.get("serve_max_length", MAX_LENGTH))

    def predict(self, context, model_input: list[str], params: dict | None = None) -> list[str]:
        from pipeline.text.sample import encode_prompt
        from pipeline.text.vectorize import decode

        p = {**PARAMS, **(params or {})}
        temperature, length, seed, mode = float(p["temperature"]), int(p["length"]), int(p["seed"]), str(p["mode"])
        if not (np.isfinite(temperature) and temperature > 0):
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(f"temperature must be finite and > 0, got {temperature}")
        if length > self.max_length:
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(
                f"length must be at most {self.max_length} (this model's serving limit), got {length}")
        modes = self.generator.modes  # a convnet has no stateful mode
        if length < 1 or seed < 0 or mode not in modes:
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(
                f"need length >= 1, seed >= 0 and mode in {modes}; got {length}, {seed}, {mode!r}")
        vocab, texts = self.meta["vocab"], []
        for i, prompt in enumerate(_prompts(model_input)):
            try:
                ids = encode_prompt(prompt, vocab, self.meta["lowercase"], key=f"prompt {i}")
            except ValueError as e:
                raise mlflow.exceptions.MlflowException.invalid_parameter_value(str(e)) from None
            out = self.generator.generate(ids, [temperature], length, [np.random.default_rng([seed, i])], mode)
            texts.append(decode(out[0], vocab))
        return texts


def log(models_dir: Path, registered_name: str | None = None):
    """Log the model in `models_dir` to the active MLflow run as a pyfunc named NAME (and register
    it under `registered_name` if given). Returns MLflow's ModelInfo."""
    import keras
    import tensorflow as tf

    import pipeline

    # Explicit requirements: MLflow would otherwise load the model in a subprocess to guess them.
    requirements = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}", f"mlflow=={mlflow.__version__}",
                    f"numpy=={np.__version__}"]
    return mlflow.pyfunc.log_model(
        # Models from code: MLflow stores this file, not a pickle, and runs it to build the model.
        # The signature comes from predict's type hints; the example's params give the defaults.
        name=NAME, python_model=__file__, pip_requirements=requirements, input_example=(["the meaning of"], PARAMS),
        artifacts={"model": str(models_dir / "model.keras"), "meta": str(models_dir / "meta.json")},
        code_paths=[str(Path(pipeline.__file__).parent)],  # the model carries the code it runs
        registered_model_name=registered_name)


if __name__ != "pipeline.text.pyfunc":  # run by MLflow as the model's code, not imported by the package
    mlflow.models.set_model(TextGenerator())
