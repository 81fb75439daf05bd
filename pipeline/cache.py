"""Content-addressed reuse of stage results for `python -m pipeline` (Hydra runs and sweeps).

A stage's key is the sha256 of what decides its outputs, read from dvc.yaml so that it is the same
list DVC uses: the values of the stage's `params`, the contents of its code `deps` (pipeline/*.py
and the pipeline/model/ package), the contents of its other `deps` that no stage writes (a user's
own corpus file: edited in place, it must not be served from the cache), and the keys of the
stages upstream of it (which stand for the deps they write). Its outputs (dvc.yaml `outs`, `metrics` and `plots`)
and its result are stored under <cache.dir>/<stage>/<key>/; a job whose stage has a stored key
copies them into its folder instead of running the stage. An exclusive lock per key makes two jobs
that want the same result at once compute it once: the second waits, then reuses it. An entry is
written to a temporary folder and renamed into place, so a killed job never leaves half of one.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

import yaml
from omegaconf import OmegaConf

from pipeline import artifacts

ROOT = Path(__file__).resolve().parent.parent
DVC_FILE = ROOT / "dvc.yaml"


def stages(dvc_file: Path = DVC_FILE) -> dict:
    """dvc.yaml's stages: name -> {cmd, deps, params, outs, metrics, plots}."""
    return yaml.safe_load(dvc_file.read_text(encoding="utf-8"))["stages"]


def _names(entries) -> list[str]:
    """dvc.yaml lists entries as plain strings or as {path: options}."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def _interpolate(text: str, cfg) -> str:
    return re.sub(r"\$\{([^}]+)\}", lambda m: str(OmegaConf.select(cfg, m.group(1), throw_on_missing=True)), text)


def outputs(spec: dict, cfg) -> list[Path]:
    """The paths a stage writes (relative to the working directory), as dvc.yaml declares them."""
    return [Path(_interpolate(p, cfg)) for field in ("outs", "metrics", "plots") for p in _names(spec.get(field))]


def _code_hash(path: Path) -> str:
    """A code dep's content: one file, or every .py file of a package folder (pipeline/model/)."""
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def key(name: str, spec: dict, cfg, upstream: list[str], produced: frozenset[Path] = frozenset()) -> str:
    """`produced`: the paths the stages write (`outputs` of each); a dep among them is covered by
    its stage's key in `upstream`, any other non-code dep by its content."""
    params = {}
    for p in _names(spec.get("params")):
        value = OmegaConf.select(cfg, p, throw_on_missing=True)
        params[p] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    code, inputs = {}, {}
    for d in _names(spec.get("deps")):
        if d.startswith("pipeline/"):
            code[d] = _code_hash(ROOT / d)
        elif (path := Path(_interpolate(d, cfg))) not in produced:
            file = ROOT / path.expanduser()  # dvc.yaml's paths are the project's
            inputs[str(path)] = artifacts.sha256_of(file) if file.is_file() else None  # missing: the stage says so
    outs = [str(p) for p in outputs(spec, cfg)]
    payload = json.dumps({"stage": name, "params": params, "code": code, "inputs": inputs, "upstream": upstream,
                          "outs": outs}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _copy(src: Path, dst: Path) -> None:
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    elif dst.exists():
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)


def run(name: str, stage: Callable, cfg, upstream: list[str], store: Path) -> tuple[dict, str, str]:
    """Run `stage(cfg)` or reuse its stored result. Returns (result, "ran" or "reused", key)."""
    every = stages()
    spec = every[name]
    produced = frozenset(p for s in every.values() for p in outputs(s, cfg))
    k = key(name, spec, cfg, upstream, produced)
    entry, outs = store / name / k, outputs(spec, cfg)
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.parent / f"{k}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the job dies
        stored = [entry / "files" / str(i) for i in range(len(outs))]
        if (entry / "result.json").is_file() and all(p.exists() for p in stored):
            for src, dst in zip(stored, outs):
                _copy(src, dst)
            return json.loads((entry / "result.json").read_text(encoding="utf-8")), "reused", k
        result = stage(cfg)
        staging = entry.with_name(f".{k}.{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        for i, out in enumerate(outs):
            _copy(out, staging / "files" / str(i))
        (staging / "result.json").write_text(json.dumps(result, default=str), encoding="utf-8")
        shutil.rmtree(entry, ignore_errors=True)  # an incomplete entry from an older version
        staging.rename(entry)
        return result, "ran", k
