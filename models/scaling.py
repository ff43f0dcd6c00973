"""Scaling laws: plan a run from a compute or token budget, and fit the law to runs.

The parametric law of Hoffmann et al. 2022 ("Training Compute-Optimal Large Language
Models", approach 3, Eq. 2 and 10):

    L(N, D) = E + A / N^alpha + B / D^beta

N is the parameter count with embeddings (as Hoffmann et al. count it; Kaplan et al.
2020 leave embeddings out), D training tokens, L the loss in nats per token. Under
C = 6 N D the loss-minimising split of a budget C has the closed form

    N_opt = G (C/6)^a,  D_opt = G^-1 (C/6)^b,  G = (alpha A / (beta B))^(1 / (alpha + beta)),
    a = beta / (alpha + beta),  b = alpha / (alpha + beta)              (paper, Eq. 4)

With attention counted (``seq_len`` given) the split is found numerically.

Fitting follows the paper's approach 3: minimise the Huber loss (delta 1e-3) of the
residuals log L_hat - log L, with L_hat written as a log-sum-exp of
(a - alpha log N, b - beta log D, e) where A = e^a, B = e^b, E = e^e, by L-BFGS from a
grid of initialisations; bootstrap resamples of the runs give confidence intervals.
IsoFLOP fits (approach 2) put a parabola in log N through each budget's losses.

Everything here is plain functions on numbers and arrays. Beside it: ``models.shapes``
(the model config closest to a planned N), ``tasks.scaling`` (runs from a CSV, the plot,
a token index's size), ``flows/sweep.py`` (plans and trains the runs); ``pretrain scaling``
is the command line.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pretrain.config import ConfigError, read_yaml_file

LAW_FIELDS = ("E", "A", "B", "alpha", "beta")
HUBER_DELTA = 1e-3
MAX_ITERATIONS = 1000  # L-BFGS iterations per start; a flat direction (E -> 0 on runs far from it) needs many
# Box for (a, b, e, alpha, beta), A = e^a etc.: wide enough for any real fit, it only keeps a degenerate
# problem (few runs, a bootstrap sample of repeated runs) from running off to overflow.
FIT_BOUNDS = ((-30.0, 60.0), (-30.0, 60.0), (-30.0, 10.0), (0.0, 5.0), (0.0, 5.0))
DEFAULT_ASPECT_RATIO = 64.0  # d_model / n_layers; Kaplan et al. 2020 (Fig. 5): loss is flat over a wide range
DATA_REPEAT_WARN_EPOCHS = 4.0  # Muennighoff et al. 2023: up to ~4 epochs cost little against fresh data
# Dense bf16 peak per device (not the sparse figure): the budget of a GPU-hour here, MFU in training.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


class ScalingError(ValueError):
    """Bad input to the planner or the fit; the message names the field or flag."""


# ---------------------------------------------------------------- the law


@dataclass(frozen=True)
class ScalingLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    name: str = "custom"
    source: str = ""

    def __post_init__(self):
        for key in LAW_FIELDS:
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ScalingError(f"law {self.name!r}: {key} must be a positive number, got {value!r}")

    def loss(self, n_params, n_tokens):
        """Predicted loss (nats/token); works on scalars and numpy arrays."""
        n, d = np.asarray(n_params, dtype=float), np.asarray(n_tokens, dtype=float)
        value = self.E + self.A / n ** self.alpha + self.B / d ** self.beta
        return float(value) if value.ndim == 0 else value

    @property
    def a(self) -> float:
        """Exponent of N_opt in C: beta / (alpha + beta)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D_opt in C: alpha / (alpha + beta)."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    def params(self) -> dict[str, float]:
        return {key: getattr(self, key) for key in LAW_FIELDS}


# Hoffmann et al. 2022, approach 3 (their Eq. 10), as printed.
CHINCHILLA = ScalingLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, name="chinchilla",
                        source="Hoffmann et al. 2022, Training Compute-Optimal LLMs, approach 3")
# Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt", refit of approach 3.
EPOCH = ScalingLaw(E=1.82, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658, name="epoch",
                   source="Besiroglu et al. 2024, Chinchilla Scaling: A replication attempt")
LAWS = {"chinchilla": CHINCHILLA, "epoch": EPOCH}


def law_from_mapping(data: dict, name: str = "custom", source: str = "") -> ScalingLaw:
    """A law from a mapping with keys E, A, B, alpha, beta (e.g. ``pretrain scaling fit --json``)."""
    if not isinstance(data, dict):
        raise ScalingError(f"law {name!r}: expected a mapping with {', '.join(LAW_FIELDS)}, got {type(data).__name__}")
    missing = [key for key in LAW_FIELDS if key not in data]
    if missing:
        raise ScalingError(f"law {name!r}: missing {', '.join(missing)} (has {', '.join(map(str, data)) or 'nothing'})")
    values = {}
    for key in LAW_FIELDS:
        try:
            values[key] = float(data[key])
        except (TypeError, ValueError):
            raise ScalingError(f"law {name!r}: {key} must be a number, got {data[key]!r}") from None
    return ScalingLaw(**values, name=name, source=source)


def load_law(name_or_path: str) -> ScalingLaw:
    """A named law (chinchilla, epoch) or a JSON/YAML file with E, A, B, alpha, beta."""
    if name_or_path in LAWS:
        return LAWS[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise ScalingError(f"--law: {name_or_path!r} is neither a named law ({', '.join(LAWS)}) nor a file")
    try:
        data = read_yaml_file(path, "--law:")  # JSON is YAML
    except ConfigError as error:
        raise ScalingError(f"{error}; give a JSON file from `pretrain scaling fit --json`") from None
    return law_from_mapping(data, name=path.stem, source=str(path))


# ---------------------------------------------------------------- compute budgets


def device_peak_flops(device: str) -> float:
    """Dense bf16 peak of a device, from the table the training code's MFU uses."""
    peaks = {key.lower(): value for key, value in PEAK_BF16_FLOPS.items()}
    if device.lower() not in peaks:
        raise ScalingError(f"--device: unknown device {device!r}; known: {', '.join(sorted(peaks))}")
    return peaks[device.lower()]


def flops_from_gpu_hours(gpu_hours: float, device: str, mfu: float) -> float:
    """Training FLOPs of ``gpu_hours`` at ``mfu`` of the device's dense bf16 peak."""
    if not gpu_hours > 0:
        raise ScalingError(f"--gpu-hours must be positive, got {gpu_hours}")
    if not 0 < mfu <= 1:
        raise ScalingError(f"--mfu must be in (0, 1], got {mfu}")
    return gpu_hours * 3600.0 * device_peak_flops(device) * mfu


# ---------------------------------------------------------------- allocation


@dataclass(frozen=True)
class Allocation:
    """A planned run: parameters, tokens, training FLOPs and the law's loss for them."""

    n_params: float
    n_tokens: float
    flops: float
    loss: float
    law: str
    method: str  # closed_form (C = 6ND), numeric (with attention FLOPs), tokens (data-limited)
    seq_len: int | None = None

    @property
    def tokens_per_param(self) -> float:
        return self.n_tokens / self.n_params

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_param": self.tokens_per_param}


def shape_for_params(n_params: float, aspect_ratio: float = DEFAULT_ASPECT_RATIO) -> tuple[float, float]:
    """Continuous (n_layers, d_model) with 12 d^2 parameters per layer (attention 4 d^2,
    SwiGLU 3 x d x 8/3 d) and d_model = aspect_ratio x n_layers."""
    d_model = (n_params * aspect_ratio / 12.0) ** (1.0 / 3.0)
    return d_model / aspect_ratio, d_model


def training_flops_per_token(n_params: float, seq_len: int | None,
                             aspect_ratio: float = DEFAULT_ASPECT_RATIO) -> float:
    """6 N plus attention's 12 x n_layers x seq_len x d_model, on the shape ``shape_for_params``
    gives N: the training code's count (``models.transformer.flops_per_token``) for a model
    with tied embeddings, whose 6 N includes the output head."""
    if not seq_len:
        return 6.0 * n_params
    n_layers, d_model = shape_for_params(n_params, aspect_ratio)
    return 6.0 * n_params + 12.0 * n_layers * seq_len * d_model


def check_positive(value: float, flag: str) -> None:
    """Refuse a budget or size that is not a positive finite number, naming its flag."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ScalingError(f"{flag} must be a positive number, got {value!r}")


def optimal_allocation(flops: float, law: ScalingLaw = CHINCHILLA, seq_len: int | None = None,
                       aspect_ratio: float = DEFAULT_ASPECT_RATIO) -> Allocation:
    """The N and D that minimise L(N, D) for ``flops`` of training compute.

    Without ``seq_len``: the closed form under C = 6 N D. With it: C = D x (6 N +
    attention FLOPs per token at that sequence length), minimised numerically over log N.
    """
    check_positive(flops, "--flops")
    if not seq_len:
        n_params = law.G * (flops / 6.0) ** law.a
        n_tokens = flops / (6.0 * n_params)
        return Allocation(n_params, n_tokens, flops, law.loss(n_params, n_tokens), law.name, "closed_form")
    from scipy.optimize import minimize_scalar

    def loss_at(log_n: float) -> float:
        n = math.exp(log_n)
        return law.loss(n, flops / training_flops_per_token(n, seq_len, aspect_ratio))

    guess = math.log(law.G * (flops / 6.0) ** law.a)
    best = minimize_scalar(loss_at, bounds=(guess - 6.0, min(guess + 6.0, math.log(flops / 6.0))),
                           method="bounded", options={"xatol": 1e-10})
    n_params = math.exp(best.x)
    n_tokens = flops / training_flops_per_token(n_params, seq_len, aspect_ratio)
    return Allocation(n_params, n_tokens, flops, law.loss(n_params, n_tokens), law.name, "numeric", seq_len)


def plan_for_tokens(tokens: float, law: ScalingLaw = CHINCHILLA) -> Allocation:
    """The compute-optimal model for exactly ``tokens`` of data (one epoch): the N whose
    optimal D (closed form) is ``tokens``. A bigger N still lowers the law's loss, but
    each FLOP would then be better spent on more data."""
    check_positive(tokens, "--tokens")
    n_params = law.G * (tokens * law.G) ** (law.a / law.b)
    return Allocation(n_params, tokens, 6.0 * n_params * tokens, law.loss(n_params, tokens), law.name, "tokens")


def optimal_tokens_for_params(n_params: float, law: ScalingLaw = CHINCHILLA) -> float:
    """D_opt of the budget whose N_opt is ``n_params`` (closed form)."""
    check_positive(n_params, "--model")
    return (1.0 / law.G) * (n_params / law.G) ** (law.b / law.a)


def epochs_needed(n_params: float, tokens_available: float, law: ScalingLaw = CHINCHILLA) -> dict[str, Any]:
    """How many passes over ``tokens_available`` a compute-optimal run of an N-parameter model takes."""
    check_positive(tokens_available, "--tokens")
    n_tokens = optimal_tokens_for_params(n_params, law)
    epochs = n_tokens / tokens_available
    return {"n_params": n_params, "optimal_tokens": n_tokens, "tokens_available": tokens_available,
            "epochs": epochs, "flops": 6.0 * n_params * n_tokens, "loss": law.loss(n_params, n_tokens),
            "repeats_too_much": epochs > DATA_REPEAT_WARN_EPOCHS}


def loss_above_uniform(loss: float, vocab_size: int) -> str | None:
    """Why a predicted loss is meaningless (worse than a uniform guess over the vocabulary), or None."""
    uniform = math.log(vocab_size)
    if loss <= uniform:
        return None
    return (f"the law predicts {loss:.4g} nats/token, above ln({vocab_size:,}) = {uniform:.4g}, the loss of a uniform "
            f"guess over the vocabulary: the law does not apply this far below the runs it was fitted on, so N "
            f"and D are extrapolations to take with care")


# ---------------------------------------------------------------- fitting (approach 3)


@dataclass(frozen=True)
class InitGrid:
    """Initialisations of (a, b, e, alpha, beta), A = e^a etc.; the paper's grid by default."""

    a: tuple[float, ...] = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
    b: tuple[float, ...] = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
    e: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
    alpha: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
    beta: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)

    def points(self) -> np.ndarray:
        mesh = np.meshgrid(self.a, self.b, self.e, self.alpha, self.beta, indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=1)  # (starts, 5)


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss and its derivative, elementwise."""
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))
    return value, np.where(small, r, delta * np.sign(r))


def _terms(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """(points, 3): a - alpha log N, b - beta log D, e; theta may be (5,) or (starts, 5)."""
    theta = np.atleast_2d(theta)
    a, b, e, alpha, beta = (theta[:, i:i + 1] for i in range(5))
    return np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, a.shape[:1] + log_n.shape)], axis=-1)


def huber_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray,
                    delta: float = HUBER_DELTA) -> tuple[float, np.ndarray]:
    """Sum over runs of Huber(LSE(a - alpha log N, b - beta log D, e) - log L), and its gradient."""
    a, b, e, alpha, beta = theta
    t1, t2 = a - alpha * log_n, b - beta * log_d
    top = np.maximum(np.maximum(t1, t2), e)
    w1, w2, w3 = np.exp(t1 - top), np.exp(t2 - top), np.exp(e - top)
    total = w1 + w2 + w3
    r = top + np.log(total) - log_loss
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum()
    slope = np.where(small, r, delta * np.sign(r)) / total  # Huber' x d lse / d term, per term below
    g1, g2 = slope * w1, slope * w2
    grad = np.array([g1.sum(), g2.sum(), (slope * w3).sum(), -(g1 * log_n).sum(), -(g2 * log_d).sum()])
    return float(value), grad


def _objective_at_starts(starts: np.ndarray, log_n, log_d, log_loss, delta: float) -> np.ndarray:
    terms = _terms(starts, log_n, log_d)  # (starts, points, 3)
    top = terms.max(axis=2, keepdims=True)
    lse = (top + np.log(np.exp(terms - top).sum(axis=2, keepdims=True)))[..., 0]
    return _huber(lse - log_loss, delta)[0].sum(axis=1)


def _minimise(starts: np.ndarray, log_n, log_d, log_loss, delta: float) -> tuple[np.ndarray, float]:
    """Best L-BFGS result over ``starts``. The objective is divided by delta^2 and the number
    of runs so that its scale is near 1: L-BFGS-B's relative stopping rule otherwise stops at once (the early
    stop Besiroglu et al. 2024 found in the original fit)."""
    from scipy.optimize import minimize

    scale = 1.0 / (delta * delta * len(log_loss))

    def scaled(theta):
        value, grad = huber_objective(theta, log_n, log_d, log_loss, delta)
        return value * scale, grad * scale

    best_theta, best_value = None, math.inf
    for start in starts:
        result = minimize(scaled, np.clip(start, *np.array(FIT_BOUNDS).T), jac=True, method="L-BFGS-B",
                          bounds=FIT_BOUNDS,
                          options={"maxiter": MAX_ITERATIONS, "ftol": 1e-14, "gtol": 1e-10})
        if result.fun < best_value:
            best_theta, best_value = result.x, float(result.fun)
    return best_theta, best_value / scale


def _law_of(theta: np.ndarray, name: str) -> ScalingLaw:
    a, b, e, alpha, beta = (float(x) for x in theta)
    return ScalingLaw(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=max(alpha, 1e-12),
                      beta=max(beta, 1e-12), name=name, source="fit (Huber on log loss, L-BFGS)")


@dataclass
class LawFit:
    law: ScalingLaw
    intervals: dict[str, tuple[float, float]]  # the bootstrap's (low, high) per parameter
    confidence: float
    objective: float  # sum of Huber losses at the optimum
    n_runs: int
    starts: int
    bootstrap: int

    def to_dict(self) -> dict[str, Any]:
        law = self.law
        return {**law.params(), "a": law.a, "b": law.b, "G": law.G,
                "intervals": {k: list(v) for k, v in self.intervals.items()}, "confidence": self.confidence,
                "objective": self.objective, "n_runs": self.n_runs, "starts": self.starts,
                "bootstrap": self.bootstrap, "huber_delta": HUBER_DELTA}


def check_runs(n_params, n_tokens, losses) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs as float arrays of one value each per run, all positive: the logs of the fit need it."""
    arrays = [np.asarray(x, dtype=float) for x in (n_params, n_tokens, losses)]
    for name, values in zip(("params", "tokens", "loss"), arrays):
        if values.ndim != 1 or len(values) != len(arrays[0]):
            raise ScalingError(f"{name}: expected one value per run ({len(arrays[0])}), got shape {values.shape}")
        bad = np.flatnonzero(~(np.isfinite(values) & (values > 0)))
        if bad.size:
            raise ScalingError(f"{name}: run {int(bad[0])} has {float(values[bad[0]])!r}; every value must be positive")
    return arrays[0], arrays[1], arrays[2]


MIN_DISTINCT_SIZES = 3  # A / N^alpha next to E: two sizes fit any alpha (likewise D)
MIN_DISTINCT_RUNS = 5  # distinct (N, D) points for 5 parameters


def _check_identifiable(n: np.ndarray, d: np.ndarray) -> None:
    """Refuse runs that cannot pin the law down: repeats of too few (N, D) points."""
    distinct_n, distinct_d = len(np.unique(n)), len(np.unique(d))
    distinct_runs = len({(float(a), float(b)) for a, b in zip(n, d)})
    if distinct_n < MIN_DISTINCT_SIZES or distinct_d < MIN_DISTINCT_SIZES or distinct_runs < MIN_DISTINCT_RUNS:
        raise ScalingError(
            f"the runs cannot identify the law: {len(n)} runs have {distinct_n} distinct N, {distinct_d} distinct D "
            f"and {distinct_runs} distinct (N, D); fitting E, A, B, alpha, beta needs at least "
            f"{MIN_DISTINCT_SIZES} distinct N, {MIN_DISTINCT_SIZES} distinct D and {MIN_DISTINCT_RUNS} distinct "
            "(N, D) points (train several model sizes at several budgets, e.g. `pretrain scaling sweep`)")


def _check_inside_box(theta: np.ndarray) -> None:
    """A fit that ran into the search box's edge is the box, not a law (E -> 0 is allowed: the data may
    not reach the irreducible loss)."""
    names = ("log A", "log B", "log E", "alpha", "beta")
    hits = [f"{name} = {value:.4g} (bound {bound:g})"
            for name, value, (low, high) in zip(names, theta, FIT_BOUNDS)
            for bound in (low, high)
            if abs(value - bound) < 1e-6 * max(1.0, abs(bound)) and not (name == "log E" and bound == low)]
    if hits:
        raise ScalingError(f"the runs cannot identify the law: the fit ran to the edge of its search box "
                           f"({', '.join(hits)}); add runs that vary N and D more widely")


def fit_law(n_params, n_tokens, losses, grid: InitGrid = InitGrid(), starts: int | None = 32,
            bootstrap: int = 100, confidence: float = 0.95, delta: float = HUBER_DELTA, seed: int = 0,
            name: str = "fit") -> LawFit:
    """Fit E, A, B, alpha, beta to runs, as Hoffmann et al. 2022 (approach 3).

    Every point of ``grid`` is scored; L-BFGS runs from the ``starts`` best of them
    (``None``: from all of them, as the paper). Each of ``bootstrap`` resamples of the
    runs (with replacement) is refitted from the full fit's optimum and the best grid
    point; the intervals are the resamples' central ``confidence`` percentiles.
    """
    n, d, loss = check_runs(n_params, n_tokens, losses)
    if len(loss) < 5:
        raise ScalingError(f"fitting 5 parameters needs at least 5 runs, got {len(loss)}")
    _check_identifiable(n, d)
    log_n, log_d, log_loss = np.log(n), np.log(d), np.log(loss)
    points = grid.points()
    order = np.argsort(_objective_at_starts(points, log_n, log_d, log_loss, delta))
    chosen = points[order if starts is None else order[:starts]]
    theta, value = _minimise(chosen, log_n, log_d, log_loss, delta)
    _check_inside_box(theta)

    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
        pick = rng.integers(0, len(loss), len(loss))
        boot, _ = _minimise(np.vstack([theta, points[order[:1]]]), log_n[pick], log_d[pick], log_loss[pick], delta)
        samples.append(_law_of(boot, name).params())
    tail = 100.0 * (1.0 - confidence) / 2.0
    intervals = {key: (float(np.percentile([s[key] for s in samples], tail)),
                       float(np.percentile([s[key] for s in samples], 100.0 - tail)))
                 for key in LAW_FIELDS} if samples else {}
    return LawFit(_law_of(theta, name), intervals, confidence, value, len(loss), len(chosen), bootstrap)


# ---------------------------------------------------------------- IsoFLOP profiles (approach 2)


@dataclass
class IsoFlopCurve:
    flops: float  # the budget (mean of its runs' FLOPs)
    n_params: list[float]
    losses: list[float]
    coeffs: tuple[float, float, float] | None  # loss = c2 x^2 + c1 x + c0, x = ln N; None: fewer than 3 runs
    n_opt: float | None  # the parabola's minimum; None without one (c2 <= 0, or no fit)
    loss_opt: float | None


@dataclass
class IsoFlopResult:
    curves: list[IsoFlopCurve]
    a: float | None  # N_opt ~ C^a over the curves with a minimum (None with fewer than 2)
    b: float | None  # D_opt = C / (6 N_opt) ~ C^b

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "curves": [asdict(c) for c in self.curves]}


def group_budgets(flops: np.ndarray, rel_tol: float = 0.05) -> list[np.ndarray]:
    """Indices of runs whose FLOPs lie within ``rel_tol`` (relative) of the group's smallest."""
    order = np.argsort(flops)
    groups, current = [], [order[0]] if len(order) else []
    for i in order[1:]:
        if flops[i] <= flops[current[0]] * (1 + rel_tol):
            current.append(i)
        else:
            groups.append(np.array(current))
            current = [i]
    if current:
        groups.append(np.array(current))
    return groups


def isoflop_fits(n_params, losses, flops) -> IsoFlopResult:
    """A parabola in ln N through each budget's losses; its minimum is that budget's N_opt."""
    n, loss = np.asarray(n_params, dtype=float), np.asarray(losses, dtype=float)
    flops = np.asarray(flops, dtype=float)
    curves = []
    for group in group_budgets(flops):
        x, y = np.log(n[group]), loss[group]
        budget = float(flops[group].mean())
        coeffs = n_opt = loss_opt = None
        if len(np.unique(x)) >= 3:
            c2, c1, c0 = (float(c) for c in np.polyfit(x, y, 2))
            coeffs = (c2, c1, c0)
            if c2 > 0:
                x_opt = -c1 / (2 * c2)
                n_opt, loss_opt = float(math.exp(x_opt)), float(c2 * x_opt ** 2 + c1 * x_opt + c0)
        curves.append(IsoFlopCurve(budget, n[group].tolist(), y.tolist(), coeffs, n_opt, loss_opt))
    with_min = [c for c in curves if c.n_opt is not None]
    a = b = None
    if len(with_min) >= 2:
        log_c = np.log([c.flops for c in with_min])
        log_n = np.log([c.n_opt for c in with_min])
        a = float(np.polyfit(log_c, log_n, 1)[0])
        b = float(np.polyfit(log_c, log_c - math.log(6.0) - log_n, 1)[0])
    return IsoFlopResult(curves, a, b)
