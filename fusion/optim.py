"""Optimiser recipes (the published ones as defaults) and a resumable learning-rate controller.

Every ``OptimConfig`` field left ``null`` takes the value of its recipe; ``recipe: auto``
picks by head type (DLLFA and meanP -> ``dllfa``, all others -> ``laff``):

- ``laff`` (LAFF / W2VV++): RMSprop lr 1e-4, grad-norm clip 2; after every epoch torch's
  ``StepLR`` (x0.99) then ``ReduceLROnPlateau`` (factor 0.5, patience 2, torch's defaults
  otherwise) on the validation metric, as the official code calls them: the lr halves on the
  *third* epoch in a row without an improvement (torch's: above the best by 1e-4 relative).
- ``dllfa`` (CLIP4Clip-style): AdamW lr 1e-4, weight decay 0.2 (not on norms, biases,
  embeddings, logit scale, lambda), linear warm-up over the first 10% of steps then cosine
  to zero, grad-norm clip 1.0.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from vidfuse.errors import ConfigError

RECIPES: dict[str, dict] = {
    "laff": dict(name="rmsprop", lr=1e-4, weight_decay=0.0, grad_clip=2.0, schedule="decay_plateau",
                 epoch_decay=0.99, plateau_factor=0.5, plateau_patience=2, warmup=0.0),
    "dllfa": dict(name="adamw", lr=1e-4, weight_decay=0.2, grad_clip=1.0, schedule="warmup_cosine",
                  epoch_decay=1.0, plateau_factor=1.0, plateau_patience=0, warmup=0.1),
}
SCHEDULES = ("decay_plateau", "warmup_cosine", "constant")
OPTIMIZERS = ("rmsprop", "adamw", "adam", "sgd")


@dataclass
class OptimConfig:
    recipe: str = "auto"  # auto | laff | dllfa
    name: Optional[str] = None  # rmsprop | adamw | adam | sgd
    lr: Optional[float] = None
    weight_decay: Optional[float] = None  # decoupled for adamw; never on norms/biases/embeddings
    grad_clip: Optional[float] = None  # max global grad norm; 0 = no clipping
    schedule: Optional[str] = None  # decay_plateau | warmup_cosine | constant
    epoch_decay: Optional[float] = None  # decay_plateau: lr factor after each epoch
    plateau_factor: Optional[float] = None  # decay_plateau: lr factor on a plateau
    plateau_patience: Optional[int] = None  # epochs without improvement that make a plateau (0 = off)
    warmup: Optional[float] = None  # warmup_cosine: fraction of all steps


def resolve_optim(cfg: OptimConfig, head_type: str) -> OptimConfig:
    """A copy with ``recipe`` made concrete and every ``None`` filled from it."""
    recipe = cfg.recipe
    if recipe == "auto":
        recipe = "dllfa" if head_type in ("dllfa", "meanp") else "laff"
    if recipe not in RECIPES:
        raise ConfigError(f"optim.recipe {cfg.recipe!r} is unknown (choose from auto, {', '.join(RECIPES)})")
    values = {k: (v if v is not None else RECIPES[recipe].get(k)) for k, v in dataclasses.asdict(cfg).items()}
    values["recipe"] = recipe
    out = OptimConfig(**values)
    if out.name not in OPTIMIZERS:
        raise ConfigError(f"optim.name {out.name!r} is unknown (choose from {', '.join(OPTIMIZERS)})")
    if out.schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule {out.schedule!r} is unknown (choose from {', '.join(SCHEDULES)})")
    return out


def param_groups(model: nn.Module, weight_decay: float, extra_no_decay: set[str] = frozenset()) -> list[dict]:
    """Decay only matrices of non-embedding layers: not norms, biases, embeddings, scalars."""
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or id(p) in embedding_params or name in extra_no_decay:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig, extra_no_decay: set[str] = frozenset()) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay or 0.0, extra_no_decay)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)


class LrController:
    """The lr of every group: per step (warm-up/cosine, a pure function of the step) or per
    epoch (``decay_plateau``: torch's StepLR then ReduceLROnPlateau on the optimiser itself).

    ``step()`` after every optimiser step; ``end_epoch(improved, metric)`` after validation.
    ``metric`` is the validation value the plateau watches (``lower_is_better`` picks torch's
    mode ``min``); without one (no validation set, or a caller that only knows whether the
    epoch improved) the plateau sees a value that rises exactly on the improving epochs.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int,
                 lower_is_better: bool = False):
        from torch.optim.lr_scheduler import ReduceLROnPlateau, StepLR

        self.opt, self.cfg = optimizer, cfg
        self.total_steps = max(1, total_steps)
        self.steps = 0
        self.epochs = 0
        self.sign = -1.0 if lower_is_better else 1.0
        self.score = 0.0  # the value shown to the plateau when no metric is given
        self.step_lr: Optional[StepLR] = None
        self.plateau: Optional[ReduceLROnPlateau] = None
        self._apply()
        if cfg.schedule == "decay_plateau":
            self.step_lr = StepLR(optimizer, step_size=1, gamma=cfg.epoch_decay)
            if cfg.plateau_patience:
                self.plateau = ReduceLROnPlateau(optimizer, mode="min" if lower_is_better else "max",
                                                 factor=cfg.plateau_factor, patience=cfg.plateau_patience)

    def factor(self) -> float:
        """Multiplier of the base lr for the per-step schedules (1 for ``decay_plateau``: torch sets it)."""
        c = self.cfg
        if c.schedule == "warmup_cosine":
            warm = int(round(c.warmup * self.total_steps))
            if self.steps < warm:
                return (self.steps + 1) / warm
            progress = (self.steps - warm) / max(1, self.total_steps - warm)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    def _apply(self) -> None:
        if self.cfg.schedule == "decay_plateau":
            return  # per epoch, by torch's schedulers
        f = self.factor()
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.lr * f

    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def step(self) -> None:
        self.steps += 1
        self._apply()

    def end_epoch(self, improved: bool, metric: Optional[float] = None) -> None:
        self.epochs += 1
        if self.step_lr is not None:
            self.step_lr.step()
        if self.plateau is not None:
            if metric is None or not math.isfinite(metric):
                self.score += 1.0 if improved else 0.0
                metric = self.sign * self.score
            self.plateau.step(metric)
        self._apply()

    def state_dict(self) -> dict:
        return {"steps": self.steps, "epochs": self.epochs, "score": self.score,
                "step_lr": self.step_lr.state_dict() if self.step_lr else None,
                "plateau": self.plateau.state_dict() if self.plateau else None}

    def load_state_dict(self, state: dict) -> None:
        """State of :meth:`state_dict`; the lr itself comes back with the optimiser's state."""
        if "plateau_mult" in state:
            from vidfuse.errors import VidfuseError

            raise VidfuseError("the lr schedule state was saved by an earlier vidfuse (plateau halving one epoch "
                               "early): rerun with --fresh")
        self.steps, self.epochs, self.score = int(state["steps"]), int(state["epochs"]), float(state.get("score", 0.0))
        if self.step_lr is not None and state.get("step_lr"):
            self.step_lr.load_state_dict(state["step_lr"])
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])
        self._apply()
