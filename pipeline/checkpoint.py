"""Training state saved at every epoch end, so that a killed train stage resumes where it stopped.

<paths.checkpoints>/ holds epoch_<n>/ folders, each with model.keras (weights and optimizer state),
best_weights.npz and best_optimizer.npz (the best validation epoch so far) and state.json (epoch, history, the best loss,
plateau and rollback counters, the sampling RNG state, the MLflow run id), plus `latest`, a file
naming the newest complete folder. A folder is written in full before `latest` is switched to it
(atomically), so a kill at any moment leaves the previous or the new checkpoint, never half of one.

state.json also carries a fingerprint of everything the training depends on (data hashes, seed,
vectorize, model, train): a checkpoint of another configuration or other data is never resumed.
Not a DVC output: DVC deletes a stage's outputs before it runs the stage again.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from pipeline import artifacts

LATEST = "latest"


def fingerprint(settings: dict) -> str:
    """A stable hash of the JSON-able `settings`."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def save(folder: Path, epoch: int, model, best_weights: list, best_optimizer: list, state: dict,
         arrays: dict[str, list] | None = None) -> None:
    """Write epoch `epoch`'s checkpoint and make it the latest; drop the older ones. `arrays`: more
    lists of arrays, each saved as <name>.npz (what model.keras cannot hold: a GAN's two optimizers)."""
    folder = Path(folder)
    target = folder / f"epoch_{epoch:04d}"
    shutil.rmtree(target, ignore_errors=True)  # left by a kill during an earlier write
    target.mkdir(parents=True)
    model.save(target / "model.keras")  # Keras saves the optimizer's variables with the weights
    np.savez(target / "best_weights.npz", *best_weights)  # the best epoch's, to export and to roll back to
    np.savez(target / "best_optimizer.npz", *best_optimizer)
    for name, values in (arrays or {}).items():
        np.savez(target / f"{name}.npz", *values)
    (target / "state.json").write_text(json.dumps({**state, "epoch": epoch}), encoding="utf-8")
    artifacts.write_text(folder / LATEST, target.name + "\n")  # the switch: one atomic rename
    for old in folder.glob("epoch_*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)


def load_arrays(path: Path) -> list[np.ndarray]:
    """The list of arrays `save` wrote with np.savez, in order."""
    with np.load(path) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


def latest_state(folder: Path) -> tuple[Path, dict] | None:
    """The newest complete checkpoint's folder and state, whatever configuration it is of; None if
    there is none (or it cannot be read: a word on why)."""
    pointer = Path(folder) / LATEST
    if not pointer.is_file():
        return None
    target = Path(folder) / pointer.read_text(encoding="utf-8").strip()
    try:
        return target, json.loads((target / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        print(f"train: ignoring the unreadable checkpoint {target} ({e}); starting from scratch", flush=True)
        return None


def latest(folder: Path, expected_fingerprint: str) -> tuple[Path, dict] | None:
    """The newest complete checkpoint (its folder and state) if it belongs to this configuration
    and data, else None (and a word on why, when there was one to ignore)."""
    found = latest_state(folder)
    if found is None:
        return None
    target, state = found
    if state.get("fingerprint") != expected_fingerprint:
        print(f"train: ignoring the checkpoint in {folder}: it is of another configuration or other data; "
              "starting from scratch", flush=True)
        return None
    return target, state


def clear(folder: Path) -> None:
    """Remove all checkpoints: training finished and its outputs are written."""
    pointer = Path(folder) / LATEST
    pointer.unlink(missing_ok=True)
    for old in Path(folder).glob("epoch_*"):
        shutil.rmtree(old, ignore_errors=True)
    for empty in (Path(folder), Path(folder).parent):  # checkpoints/vae, then checkpoints/ if nothing else is there
        try:
            empty.rmdir()
        except OSError:
            break
