"""The one epoch loop of every training stage: fusion heads (``vidfuse train``) and extractor
fine-tuning (``vidfuse finetune``) differ only in what one epoch trains and how it validates.

A stage hands :func:`run_epochs` an :class:`EpochTask`; the loop owns the rest, in this
order every epoch (a kill between two steps leaves whole files that resume exactly):
torch reseeded from (seed, epoch) -> ``task.train_epoch`` -> ``task.validate`` -> on
improvement of ``val_metric`` ``task.save_best`` -> ``task.end_epoch`` (lr plateau) ->
``metrics.jsonl`` -> ``last.pt`` (the task's state, RNG states, early-stop state,
``finished``). Without validation data the last epoch counts as the best.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from fusion.checkpoint import CheckpointError, load_checkpoint, save_atomic

log = logging.getLogger(__name__)

LOWER_IS_BETTER = ("MedR", "MeanR")


class EpochTask(Protocol):
    def train_epoch(self, epoch: int) -> dict:
        """Trains one epoch; the fields of its ``metrics.jsonl`` line (at least ``loss``)."""

    def validate(self) -> tuple[dict, dict]:
        """(``{"t2v": ..., "v2t": ...}`` metrics, extra fields of the epoch's line)."""

    def save_best(self, epoch: int, value: Optional[float], val: dict) -> None:
        """Writes the best-epoch artefacts (``value`` None when there is no validation)."""

    def end_epoch(self, improved: bool, value: Optional[float]) -> None:
        """End-of-epoch hook (the lr plateau rule; ``value`` None without validation)."""

    def state(self) -> dict:
        """Model, optimiser, lr and scaler states for ``last.pt``."""


@dataclass
class LoopState:
    """Where a run stands: restored from ``last.pt``, advanced by :func:`run_epochs`."""

    epoch: int = 0
    best: Optional[float] = None
    best_epoch: int = 0
    bad: int = 0
    stopped: bool = False
    history: list[dict] = field(default_factory=list)

    @classmethod
    def restore(cls, saved: dict, metrics_path: Path) -> "LoopState":
        return cls(epoch=saved["epoch"], best=saved["best_metric"], best_epoch=saved["best_epoch"],
                   bad=saved["bad_epochs"], stopped=saved["stopped_early"],
                   history=read_history(metrics_path, saved["epoch"]))

    def record(self, epoch: int) -> dict:
        return next((r for r in self.history if r["epoch"] == epoch and not r.get("baseline")), {})


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def metric_value(val: dict, name: str) -> float:
    side, _, key = name.partition("/")
    return float(val[side][key])


def is_better(a: float, b: Optional[float], name: str) -> bool:
    if b is None or math.isnan(b):
        return not math.isnan(a)
    return a < b if name.split("/")[-1] in LOWER_IS_BETTER else a > b


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def config_differences(old: dict, new: dict, prefix: str = "", resumable: tuple[str, ...] = ()) -> list[str]:
    """``key was A, now B`` for every setting that differs, except top-level ``resumable`` keys."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        full = f"{prefix}{key}"
        if not prefix and key in resumable:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, full + ".")
        elif a != b:
            diffs.append(f"{full} was {a!r}, now {b!r}")
    return diffs


def load_resume_state(last_path: Path, cfg_dict: dict, resumable: tuple[str, ...],
                      check: Optional[Callable[[dict], None]] = None) -> Optional[dict]:
    """``last.pt`` of an earlier run with the same trajectory settings, or None when there is none.

    ``check`` refuses a state of another kind of run (raises :class:`CheckpointError`).
    """
    if not last_path.is_file():
        return None
    state = load_checkpoint(last_path)
    if check is not None:
        check(state)
    diffs = config_differences(state["config"], cfg_dict, resumable=resumable)
    if diffs:
        raise CheckpointError(f"cannot resume {last_path.parent}: {'; '.join(diffs)} (start a new run, or resume=False)")
    return state


def read_history(path: Path, upto: int) -> list[dict]:
    """metrics.jsonl lines of epochs <= upto (a kill after the line but before last.pt)."""
    import json

    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in lines if r.get("epoch", 0) <= upto]


def write_history(path: Path, history: list[dict]) -> None:
    import json

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
    tmp.replace(path)


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, params: list,
                   grad_clip: Optional[float]) -> None:
    """One (AMP-scaled) optimiser step with optional gradient-norm clipping; gradients cleared."""
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def run_epochs(task: EpochTask, state: LoopState, *, epochs: int, seed: int, val_metric: str, early_stop: int,
               has_val: bool, metrics_path: Path, last_path: Path, last_extra: dict, desc: str,
               progress: bool = True, stop_after: Optional[int] = None,
               shown: Callable[[dict], dict] = lambda val: {}) -> LoopState:
    """Runs epochs ``state.epoch + 1 .. epochs`` (or until early stop / ``stop_after``)."""
    bar = tqdm(total=epochs, initial=min(state.epoch, epochs), desc=desc, unit="epoch", disable=not progress)
    while state.epoch < epochs and not state.stopped:
        if stop_after is not None and state.epoch >= stop_after:
            break
        state.epoch += 1
        epoch, t0 = state.epoch, time.time()
        torch.manual_seed(epoch_seed(seed, epoch))
        record: dict[str, Any] = {"epoch": epoch, **task.train_epoch(epoch)}
        if has_val:
            val, extra = task.validate()
            record.update(val)
            record.update(extra)
            value = metric_value(val, val_metric)
        else:
            val, value = {}, -record["loss"]
        improved = is_better(value, state.best, val_metric) or not has_val
        record.update({"val_metric": value if has_val else None, "best": improved})
        if improved:
            state.best, state.best_epoch, state.bad = value, epoch, 0
            task.save_best(epoch, value if has_val else None, val)
        else:
            state.bad += 1
        task.end_epoch(improved, value if has_val else None)
        state.stopped = bool(has_val and early_stop and state.bad >= early_stop)
        state.history.append(record)
        write_history(metrics_path, state.history)
        save_atomic({**task.state(), "rng": rng_state(), "epoch": epoch, "best_metric": state.best,
                     "best_epoch": state.best_epoch, "bad_epochs": state.bad, "stopped_early": state.stopped,
                     "finished": state.stopped or epoch >= epochs, **last_extra}, last_path)
        bar.update(1)
        line = {"loss": f"{record['loss']:.4f}"}
        if has_val:
            line.update({val_metric: f"{value:.4f}", "t2v R@1": f"{val['t2v']['R@1']:.1f}", **shown(val)})
        bar.set_postfix(line)
        log.info("epoch %d: %s (%.1fs)%s", epoch, line, time.time() - t0, " [best]" if improved else "")
        if state.stopped:
            log.info("early stop: %d epochs without improvement of %s", state.bad, val_metric)
    bar.close()
    return state
