"""Method and training configuration: plain dataclasses, validated from dicts, "auto" resolved.

``None`` means "auto" everywhere; :func:`resolve_config` turns every auto into a number from
the size of the training set, so a job knows its total steps before it starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, TypeVar, get_args

from .errors import ConfigError, Problem

_C = TypeVar("_C")
MethodType = Literal["fish_dip", "fish", "random", "full"]
OptimizerType = Literal["adafactor", "adamw"]
BiasCorrection = Literal["global", "per_entry"]
FisherMode = Literal["per_example", "batch"]


@dataclass(frozen=True)
class MethodConfig:
    """Which parameters train.

    * ``fish_dip``: mask from the Fisher information of the ``regressing_examples`` examples
      with the highest loss, re-chosen every ``refresh_every`` steps (REPLACING the mask).
    * ``fish``: one mask from ``regressing_examples`` random examples before training, fixed.
    * ``random``: a fixed random mask of the same size.
    * ``full``: every parameter trains.

    ``regressing_examples=None`` applies the paper's rule, clamp(int(0.1 * batches per epoch),
    3, 25), also capped at the number of training examples. ``fisher="per_example"`` sums the
    squared gradient of each example's loss separately (the empirical Fisher, exact);
    ``"batch"`` squares the gradient of the mean loss of all chosen examples at once (one
    backward pass, an approximation that loses the per-example sum).
    """

    type: MethodType = "fish_dip"
    sparsity: float = 0.01
    refresh_every: int = 100
    regressing_examples: int | None = None
    fisher: FisherMode = "per_example"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> MethodConfig:
        return _from_dict(cls, d or {}, _check_method)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["regressing_examples"] is None:
            out["regressing_examples"] = "auto"
        return out

    @property
    def sparse(self) -> bool:
        return self.type != "full"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Defaults follow the paper: Adafactor without momentum or weight
    decay, linear decay without warm-up, gradient clipping at 1.0, stop when the training
    loss stays under 1e-6 for 20 consecutive steps."""

    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    optimizer: OptimizerType = "adafactor"
    weight_decay: float = 0.0
    # AdamW on a sparse method: "per_entry" bias-corrects an entry that joins the mask at a
    # refresh by its own steps in the mask (as a fresh Adam), "global" by the run's steps.
    bias_correction: BiasCorrection = "global"
    max_grad_norm: float = 1.0
    seed: int = 0
    eval_every: int | None = None
    early_stop_loss: float = 1e-6
    early_stop_patience: int = 20
    # None: bf16 autocast for bases over 50M parameters where the hardware has bf16 matmuls
    # (loss within ~0.2% of fp32)
    bf16: bool | None = None
    max_new_tokens: int | None = None
    eval_batch_size: int = 32  # sentences decoded together during validation
    total_steps: int | None = None  # filled by resolve_config

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> TrainConfig:
        return _from_dict(cls, d or {}, _check_train)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _from_dict(cls: type[_C], d: Mapping[str, Any], check: Callable[[dict[str, Any]], list[Problem]]) -> _C:
    names = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    for key, value in d.items():
        if key not in names:
            problems.append(Problem(f"/{key}", f"unknown field {key!r}; known: {', '.join(sorted(names))}"))
            continue
        values[key] = None if value == "auto" else value
    problems += check(values)
    if problems:
        raise ConfigError(problems)
    return cls(**values)


def _check_number(values: dict[str, Any], key: str, kind: type, lo: float, hi: float) -> list[Problem]:
    v = values.get(key)
    if v is None:
        return []
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
        return [Problem(f"/{key}", f'{key} must be {"an integer" if kind is int else "a number"} or "auto"')]
    if not lo <= v <= hi:
        return [Problem(f"/{key}", f"{key} must be between {lo} and {hi}, got {v}")]
    return []


def _check_choice(values: dict[str, Any], key: str, choices: tuple[str, ...]) -> list[Problem]:
    v = values.get(key)
    if v is None or v in choices:
        return []
    return [Problem(f"/{key}", f"{key} must be one of {', '.join(choices)}; got {v!r}")]


def _check_method(v: dict[str, Any]) -> list[Problem]:
    if v.get("type") is None:
        v.pop("type", None)
    if v.get("fisher") is None:
        v.pop("fisher", None)
    return (
        _check_choice(v, "type", get_args(MethodType))
        + _check_choice(v, "fisher", get_args(FisherMode))
        + _check_number(v, "sparsity", float, 1e-6, 1.0)
        + _check_number(v, "refresh_every", int, 1, 10**7)
        + _check_number(v, "regressing_examples", int, 1, 10**6)
    )


def _check_train(v: dict[str, Any]) -> list[Problem]:
    for key in (
        "optimizer",
        "weight_decay",
        "bias_correction",
        "max_grad_norm",
        "seed",
        "early_stop_loss",
        "early_stop_patience",
        "eval_batch_size",
    ):
        if key in v and v[key] is None:
            v.pop(key)
    problems = (
        _check_choice(v, "optimizer", get_args(OptimizerType))
        + _check_choice(v, "bias_correction", get_args(BiasCorrection))
        + _check_number(v, "epochs", int, 1, 100_000)
        + _check_number(v, "max_steps", int, 1, 10**7)
        + _check_number(v, "batch_size", int, 1, 4096)
        + _check_number(v, "learning_rate", float, 1e-8, 10.0)
        + _check_number(v, "weight_decay", float, 0.0, 1.0)
        + _check_number(v, "max_grad_norm", float, 0.0, 1e6)
        + _check_number(v, "seed", int, 0, 2**63 - 1)
        + _check_number(v, "eval_every", int, 1, 10**7)
        + _check_number(v, "early_stop_patience", int, 1, 10**7)
        + _check_number(v, "max_new_tokens", int, 1, 4096)
        + _check_number(v, "eval_batch_size", int, 1, 4096)
    )
    if v.get("bf16") is not None and not isinstance(v["bf16"], bool):
        problems.append(Problem("/bf16", "bf16 must be true or false"))
    if "total_steps" in v:
        problems.append(Problem("/total_steps", "total_steps is derived; set epochs or max_steps"))
    return problems


# Learning rates for "auto". The paper's Adafactor rate (1e-2) is for sparse updates; a dense
# update of every weight at that rate diverges, so full fine-tuning gets a smaller default.
_AUTO_LR: dict[tuple[str, bool], float] = {
    ("adafactor", True): 1e-2,
    ("adafactor", False): 1e-3,
    ("adamw", True): 1e-3,
    ("adamw", False): 1e-4,
}
AUTO_TARGET_STEPS = 300


def resolve_config(cfg: TrainConfig, method: MethodConfig, n_train: int) -> TrainConfig:
    """Fill every auto value. Epochs aim at about 300 steps (few-shot data needs many epochs:
    the paper runs 250 epochs on 1% of CoNLL03), within 10..500 epochs."""
    if n_train < 1:
        raise ConfigError([Problem("/training_data", "at least one training example is needed")])
    if cfg.total_steps is not None:
        return cfg  # already resolved: resolving is idempotent
    batch = cfg.batch_size or min(8, n_train)
    per_epoch = math.ceil(n_train / batch)
    epochs = cfg.epochs or max(10, min(500, math.ceil(AUTO_TARGET_STEPS / per_epoch)))
    total = cfg.max_steps or epochs * per_epoch
    if cfg.max_steps and cfg.epochs:
        total = min(cfg.max_steps, cfg.epochs * per_epoch)
    lr = cfg.learning_rate or _AUTO_LR[(cfg.optimizer, method.sparse)]
    eval_every = cfg.eval_every or max(1, total // 5)
    return replace(
        cfg, epochs=epochs, batch_size=batch, learning_rate=lr, eval_every=eval_every, total_steps=total
    )


def regressing_count(method: MethodConfig, n_train: int, batch_size: int) -> int:
    """Examples used for the Fisher estimate. The paper's rule gives 3 for any set under
    ~300 batches; it is kept as the default and capped by the data we have."""
    if method.regressing_examples is not None:
        return max(1, min(method.regressing_examples, n_train))
    batches = math.ceil(n_train / batch_size)
    return max(1, min(n_train, max(3, min(25, int(0.1 * batches)))))
