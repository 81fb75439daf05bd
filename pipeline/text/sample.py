"""Stage sample: generate text from the trained model at each `sample.temperature`.

Reads <paths.models>/model.keras and meta.json (vocab, maxlen, the MLflow run), the held-out
<paths.prepared>/val.npy (for the default prompt and the held-out loss), train.npy (to measure memorisation: see
`pipeline.text.sample_metrics`), and `seed`, `sample` and `vectorize.maxlen`/`step`/`val_step`. Writes
<paths.samples>/temperature_<T>.txt for each temperature, <paths.metrics>/sample.json (the DVC
metrics: val_loss and val_bpc, the final model on the held-out windows, which agree with the train
stage's best_val_loss; speed; per temperature nll_per_char and distinct_2) and sample_info.json
(the whole record: prompt, settings, every sample metric), and logs the texts to the training's
MLflow run under sample/.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from pipeline import artifacts, config, tracking
from pipeline.text import sample_metrics
from pipeline.text.config import temperatures
from pipeline.text.vectorize import decode, make_dataset


# What metrics/sample.json (a DVC metric) keeps of the stage's record: the held-out loss, speed and,
# per temperature, the sample's likelihood under the model and how much it repeats itself.
COMPARED = ("val_loss", "val_bpc", "chars_per_second")
COMPARED_PER_T = ("nll_per_char", "distinct_2")


class SampleError(ValueError):
    pass


def encode_prompt(prompt: str, vocab: list[str], lowercase: bool, key: str = "sample.prompt",
                  unknown_chars: str = "error", replacement: str = " ") -> np.ndarray:
    """The prompt as ids. Characters the model never saw are, by `unknown_chars`: an error that
    lists them under `key`, dropped, or replaced by `replacement`."""
    if lowercase:
        prompt = prompt.lower()
    index = {ch: i for i, ch in enumerate(vocab)}
    unknown = sorted({ch for ch in prompt if ch not in index})
    if unknown and unknown_chars == "replace" and replacement not in index:
        raise SampleError(f"{key}: the replacement {replacement!r} is not in the model's vocabulary either")
    if unknown and unknown_chars not in ("drop", "replace"):
        more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""  # a huge prompt is not echoed back
        raise SampleError(f"{key}: characters not in the model's vocabulary: {unknown[:20]!r}{more} "
                          "(set unknown_chars to drop or replace them)")
    ids = [index.get(ch, index.get(replacement)) for ch in prompt if ch in index or unknown_chars == "replace"]
    return np.array(ids, dtype=np.int64)


def run(cfg) -> dict:
    cfg = config.section(cfg, "text")  # the text section with the shared keys (seed, mlflow, ...)
    from pipeline.machine import import_tensorflow

    import_tensorflow()  # before Keras: without TensorFlow's start-up lines on a machine without a GPU
    from pipeline.text import model as models
    from pipeline.text.generator import for_model, held_out_prompt

    s = cfg.sample
    tracking.connect(tracking.resolve_uri(cfg.mlflow.tracking_uri), cfg.mlflow.experiment)  # fail fast
    model, meta = models.load(cfg.paths.models)
    vocab, maxlen = meta["vocab"], meta["maxlen"]
    data_vocab_file = Path(cfg.paths.prepared) / "vocab.json"
    if json.loads(data_vocab_file.read_text(encoding="utf-8")) != vocab:
        raise SampleError(f"{cfg.paths.models}/meta.json: the model's vocabulary differs from the data's "
                          f"{data_vocab_file}; retrain (`dvc repro`) or point paths.models at the matching model")
    if maxlen != cfg.vectorize.maxlen:
        raise SampleError(f"{cfg.paths.models}/meta.json: the model was trained with maxlen {maxlen}, "
                          f"the data with vectorize.maxlen {cfg.vectorize.maxlen}; retrain (`dvc repro`)")
    for folder in (Path(cfg.paths.samples).parent, Path(cfg.paths.metrics)):
        artifacts.ensure_writable(folder)
    rng = np.random.default_rng(cfg.seed)
    val_ids = np.load(Path(cfg.paths.prepared) / "val.npy")  # the default prompt's text, and the held-out loss's
    if s.prompt is None:
        prompt_ids = held_out_prompt(val_ids, maxlen, rng)
    else:
        prompt_ids = encode_prompt(s.prompt, vocab, meta["lowercase"], "sample.prompt", s.unknown_chars, s.replacement)
    temps = temperatures(s.temperature)

    started = time.perf_counter()
    generator = for_model(model, maxlen)
    if s.mode not in generator.modes:
        raise SampleError(f"sample.mode={s.mode}: the {meta.get('model', model.name)} model generates in {generator.modes} only")
    out = generator.generate(prompt_ids, temps, s.length, rng, mode=s.mode, greedy=s.greedy, progress=True)
    seconds = time.perf_counter() - started

    val_loss = held_out_loss(model, val_ids, maxlen, cfg.vectorize.val_step or cfg.vectorize.step)
    train_text = decode(np.load(Path(cfg.paths.prepared) / "train.npy"), vocab)
    measured = sample_metrics.measure_all(generator, prompt_ids, {str(t): (ids, decode(ids, vocab))
                                                                  for t, ids in zip(temps, out, strict=True)}, train_text)

    prompt = decode(prompt_ids, vocab)
    samples_dir = Path(cfg.paths.samples)
    # Replace the whole folder: files of temperatures no longer configured must not linger.
    staging = samples_dir.with_name(f".{samples_dir.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    texts = {}
    for t, ids in zip(temps, out, strict=True):
        texts[t] = prompt + decode(ids, vocab)
        (staging / f"temperature_{t}.txt").write_text(texts[t] + "\n", encoding="utf-8")
    shutil.rmtree(samples_dir, ignore_errors=True)
    staging.rename(samples_dir)

    result = {"val_loss": val_loss, "val_bpc": val_loss / math.log(2), "prompt": prompt, "temperatures": temps, "length": s.length, "mode": s.mode, "greedy": s.greedy,
              "seconds": seconds, "chars_per_second": len(temps) * s.length / max(seconds, 1e-9), "metrics": measured}
    # DVC metrics hold the numbers experiments are compared by (`dvc exp show` gets a column for
    # each); the whole record (prompt, settings, every sample metric) goes beside them and to MLflow.
    artifacts.write_json(Path(cfg.paths.metrics) / "sample_info.json", result)
    artifacts.write_json(Path(cfg.paths.metrics) / "sample.json", {
        **{k: result[k] for k in COMPARED}, "metrics": {t: {k: m[k] for k in COMPARED_PER_T} for t, m in measured.items()}})

    with tracking.run(meta["mlflow"]["run_id"]):
        log(texts, result)
    for t, text in texts.items():
        print(f"--- temperature {t}\n{text}\n")
    return result


def held_out_loss(model, val_ids: np.ndarray, maxlen: int, step: int) -> float:
    """The model's mean loss (nats per character) on the held-out windows, the same windows and
    loss as the train stage's val_loss: for the exported model, its best epoch's figure."""
    model.compile(loss="sparse_categorical_crossentropy")
    # 512 windows a batch: the mean does not depend on it (beyond float rounding); speed does.
    return float(model.evaluate(make_dataset(val_ids, maxlen, step, 512, None, 0), verbose=0))


def log(texts: dict, result: dict) -> None:
    """Log the samples and what was measured to the active MLflow run."""
    import mlflow

    for t, text in texts.items():
        mlflow.log_text(text, f"sample/temperature_{t}.txt")
    # Not params: those are immutable, and re-sampling with new settings reuses the run.
    mlflow.log_dict(result, "sample/sample.json")
    mlflow.log_metrics({"sample_chars_per_second": result["chars_per_second"], "sample.val_loss": result["val_loss"],
                        "sample.val_bpc": result["val_bpc"]})
    # Per temperature (sample.nll_per_char.t0.5, ...); with one temperature, also under a name
    # that every job of a temperature sweep shares, so that the MLflow UI can sort and chart them.
    per_t = result["metrics"]
    mlflow.log_metrics({f"sample.{name}.t{t}": value for t, m in per_t.items() for name, value in m.items()})
    if len(per_t) == 1:
        mlflow.log_metrics({f"sample.{name}": value for name, value in next(iter(per_t.values())).items()})


def log_reused(cfg, result: dict) -> None:
    """What `run` logs, for a job that reused stored samples instead of generating them."""
    cfg = config.section(cfg, "text")
    folder = Path(cfg.paths.samples)
    log({t: (folder / f"temperature_{t}.txt").read_text(encoding="utf-8").rstrip("\n")
         for t in result["temperatures"]}, result)


def main() -> None:
    from pipeline.text.model import ModelError

    try:
        run(config.load())
    except (config.ConfigError, SampleError, ModelError, tracking.TrackingError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
