"""`python -m pipeline.text.generate [overrides]`: text from a trained model, shown as it is written.

Reads conf/generate.yaml (overridden on the command line, Hydra style) and a trained model: the
folder `model_dir` (model.keras + meta.json, what `dvc repro` writes) or, with `run_id`, the model/
artifacts of that MLflow run. Prints the prompt followed by the generated text, character by
character when standard output is a terminal, or writes every text to the file `output`.
Not a pipeline stage: it writes nothing else and logs nothing.

    python -m pipeline.text.generate prompt="the meaning of life is" length=300
    python -m pipeline.text.generate run_id=<id> temperature=[0.2,0.5,1.0] num_samples=2 output=texts.txt
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from pipeline import artifacts, config, tracking
from pipeline.text.config import Generate, temperatures, validate_generate
from pipeline.text.sample import SampleError, encode_prompt
from pipeline.text.vectorize import decode


def fetch_run_model(run_id: str, uri: str, dest: str) -> Path:
    """Download the model/ artifacts of MLflow run `run_id` from the store at `uri` into `dest`."""
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model", dst_path=dest,
                                                        tracking_uri=uri))
    except Exception as e:  # noqa: BLE001 - unknown run, missing artifacts, unreachable store
        raise tracking.TrackingError(f"run_id {run_id}: cannot fetch its model from {uri}: "
                                     f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _header(streams, i: int) -> str:
    t, k = streams[i]
    return f"--- temperature {t}, sample {k + 1}\n" if len(streams) > 1 else ""


def run(cfg, out=None) -> dict:
    """Generate `num_samples` texts at each temperature; print or write them. Each text has its
    own random generator, seeded from `seed` and its position, so streaming one text at a time
    and generating all of them in one batch give the same texts."""
    from pipeline.text import model as models  # Keras: after main() hid what it need not load
    from pipeline.text.generator import for_model

    out = out or sys.stdout
    with tempfile.TemporaryDirectory() as tmp:
        folder = cfg.model_dir if cfg.run_id is None else fetch_run_model(
            cfg.run_id, tracking.resolve_uri(cfg.mlflow.tracking_uri), tmp)
        model, meta = models.load(folder)
    vocab = meta["vocab"]
    prompt_ids = encode_prompt(cfg.prompt, vocab, meta["lowercase"], "prompt", cfg.unknown_chars, cfg.replacement)
    prompt = decode(prompt_ids, vocab)
    streams = [(t, k) for t in temperatures(cfg.temperature) for k in range(cfg.num_samples)]
    rngs = [np.random.default_rng([cfg.seed, i]) for i in range(len(streams))]
    gen = for_model(model, meta["maxlen"])
    if cfg.mode not in gen.modes:
        raise SampleError(f"mode={cfg.mode}: the {meta.get('model', model.name)} model generates in {gen.modes} only")
    stream = cfg.stream if cfg.stream is not None else (cfg.output is None and out.isatty())

    started = time.perf_counter()
    texts = []
    if stream:
        for i, (t, _) in enumerate(streams):
            out.write(_header(streams, i) + prompt)
            chars = []
            for nxt in gen.stream(prompt_ids, [t], cfg.length, [rngs[i]], cfg.mode, cfg.greedy):
                chars.append(vocab[nxt[0]])
                out.write(chars[-1])
                out.flush()
            out.write("\n\n" if len(streams) > 1 else "\n")
            texts.append(prompt + "".join(chars))
    else:
        ids = gen.generate(prompt_ids, [t for t, _ in streams], cfg.length, rngs, cfg.mode, cfg.greedy,
                           progress=True)
        texts = [prompt + decode(row, vocab) for row in ids]
    seconds = time.perf_counter() - started

    body = "".join(_header(streams, i) + text + ("\n\n" if len(streams) > 1 else "\n")
                   for i, text in enumerate(texts))
    if cfg.output is not None:
        artifacts.write_text(cfg.output, body)
        print(f"wrote {len(texts)} text(s) of {cfg.length} characters to {cfg.output}", file=sys.stderr)
    elif not stream:
        out.write(body)
        out.flush()
    return {"texts": texts, "prompt": prompt, "temperatures": [t for t, _ in streams], "seconds": seconds,
            "chars_per_second": len(texts) * cfg.length / max(seconds, 1e-9)}


@hydra.main(version_base=None, config_path="../../conf", config_name="generate")
def _main(raw: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from pipeline.machine import import_tensorflow

    import_tensorflow()  # before Keras: without TensorFlow's start-up lines on a machine without a GPU
    from pipeline.text import model as models

    overrides = list(HydraConfig.get().overrides.task)
    try:
        run(validate_generate(raw, config._source(overrides, "conf/generate.yaml")))
    except (config.ConfigError, models.ModelError, SampleError, tracking.TrackingError, OSError) as e:
        sys.exit(f"error: {e}")


def main() -> None:
    try:
        config.check_overrides(sys.argv[1:], "generate", config._schema_keys(Generate))
    except config.ConfigError as e:
        sys.exit(f"error: {e}")
    _main()


if __name__ == "__main__":
    main()
