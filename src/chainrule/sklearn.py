"""scikit-learn estimators backed by the chainrule engine.

:class:`MLPClassifier` and :class:`MLPRegressor` take scikit-learn's
parameter names and defaults (those of ``sklearn.neural_network``) and train
a chainrule :class:`~chainrule.nn.Sequential` with chainrule's own
optimizers, so they drop into ``Pipeline``, ``GridSearchCV`` and
``cross_val_score``. One parameter scikit-learn's MLP lacks: ``dropout``.

>>> from chainrule.sklearn import MLPClassifier
>>> clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=50, random_state=0)
>>> clf.fit(X_train, y_train).score(X_test, y_test)      # doctest: +SKIP
0.97...

Faithful to scikit-learn where it matters for results:

* the objective: mean log-loss (softmax for several classes, a single
  logistic unit for two, one logistic unit per label for multi-label) or
  half the mean squared error, plus ``alpha / 2 * sum(||W||^2) / batch_size``
  on the weights (not the biases), exactly scikit-learn's scaling;
* Glorot-uniform initialisation drawn from ``random_state`` in the same
  order as scikit-learn, the same shuffling, ``batch_size="auto"``
  (``min(200, n_samples)``), and the same stopping rule (``tol`` and
  ``n_iter_no_change`` on the training loss, or on the validation score with
  ``early_stopping``), ``learning_rate`` schedules for ``solver="sgd"``.

Training runs on :func:`chainrule.fit` (compiled by ``cr.compile`` where it
can be), with scikit-learn's batch order, penalty, stopping rule and
learning-rate schedules as callbacks; the fitted estimator carries a
:class:`~chainrule.spec.ModelSpec` (``model_spec_``), so ``cr.onnx.export``
and :meth:`save` work on it like on a CLI-trained model.

Differences: ``solver="lbfgs"`` and ``sample_weight`` are not supported;
Adam is chainrule's (PyTorch's) Adam, whose epsilon sits outside the bias
correction (scikit-learn's sits inside), a difference of order ``epsilon``;
SGD's momentum buffer holds gradients (PyTorch's convention) where
scikit-learn's holds ``lr * gradient``, which only matters when the step size
changes during training (``learning_rate`` 'invscaling' or 'adaptive' with
``momentum > 0``);
with ``early_stopping`` every single-label classification split is
stratified (scikit-learn stratifies only binary problems).

Requires scikit-learn: ``pip install "chainrule[sklearn]"``.
"""

from __future__ import annotations

try:
    import sklearn  # noqa: F401  (fail early, with the install hint)
except ImportError as _err:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError(
        'chainrule.sklearn needs scikit-learn: pip install "chainrule[sklearn]"'
    ) from _err

import numbers
import warnings
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, gen_batches, shuffle
from sklearn.utils.multiclass import type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, column_or_1d

from . import nn
from .nn import functional as F
from .spec import ACTIVATIONS, ModelSpec, make_optimizer, probabilities
from .tensor import Tensor, no_grad
from .training import Callback, fit

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn

    def _validate_data(estimator: Any, *args: Any, **kwargs: Any) -> Any:
        return estimator._validate_data(*args, **kwargs)


__all__ = ["MLPClassifier", "MLPRegressor"]

# scikit-learn's activation names, plus leaky_relu; the layers come from the shared table
_ACTIVATIONS = {k: ACTIVATIONS[k] for k in ("identity", "logistic", "tanh", "relu",
                                             "leaky_relu")}
_SOLVERS = ("adam", "sgd")
_LEARNING_RATES = ("constant", "invscaling", "adaptive")


# --------------------------------------------------------------------------
# The shared machinery
# --------------------------------------------------------------------------


def _bias(lin: nn.Linear) -> nn.Parameter:
    """The bias of one of the estimator's Linear layers (it builds them all with one)."""
    assert lin.bias is not None
    return lin.bias


class _BaseMLP(BaseEstimator):
    """Parameters, validation and the stochastic training loop shared by both estimators."""

    def __init__(
        self,
        hidden_layer_sizes: Sequence[int] | int = (100,),
        activation: str = "relu",
        *,
        solver: str = "adam",
        alpha: float = 0.0001,
        batch_size: int | str = "auto",
        learning_rate: str = "constant",
        learning_rate_init: float = 0.001,
        power_t: float = 0.5,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: int | np.random.RandomState | None = None,
        tol: float = 1e-4,
        verbose: bool = False,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        n_iter_no_change: int = 10,
        dropout: float = 0.0,
    ) -> None:
        # scikit-learn's contract: store the arguments untouched, validate in fit
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dropout = dropout

    # ----- what the subclasses define ---------------------------------------

    def _encode_targets(self, y: np.ndarray, *, first: bool, incremental: bool,
                        classes: Any = None) -> np.ndarray:
        """Targets as the network's training targets (2-D)."""
        raise NotImplementedError

    def _data_loss(self, out: Tensor, target: np.ndarray) -> Tensor:
        """The loss of the network output ``out`` (logits) against encoded targets."""
        raise NotImplementedError

    def _score_encoded(self, X: np.ndarray, target: np.ndarray) -> float:
        """Accuracy or R^2 of the current network on encoded targets (early stopping)."""
        raise NotImplementedError

    # ----- validation -------------------------------------------------------

    def _hidden_sizes(self) -> list[int]:
        sizes: Any = self.hidden_layer_sizes  # anything: validated here
        if isinstance(sizes, numbers.Integral):
            sizes = [sizes]
        try:
            sizes = list(sizes)
        except TypeError:
            raise ValueError(
                f"hidden_layer_sizes must be an int or a sequence of ints, got {sizes!r}"
            ) from None
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s <= 0:
                raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        return [int(s) for s in sizes]

    def _check_params(self) -> None:
        def positive(name: str, value: Any, integral: bool = False, zero: bool = False) -> None:
            kinds = numbers.Integral if integral else numbers.Real
            ok = isinstance(value, kinds) and not isinstance(value, bool)
            if not ok or value < 0 or (value == 0 and not zero):
                need = ">= 0" if zero else "> 0"
                kind = "an int" if integral else "a number"
                raise ValueError(f"{name} must be {kind} {need}, got {value!r}.")

        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}."
            )
        if self.solver not in _SOLVERS:
            extra = " (lbfgs is scikit-learn's own; use sklearn.neural_network for it)" \
                if self.solver == "lbfgs" else ""
            raise ValueError(f"solver must be one of {_SOLVERS}, got {self.solver!r}{extra}.")
        if self.learning_rate not in _LEARNING_RATES:
            raise ValueError(
                f"learning_rate must be one of {_LEARNING_RATES}, got {self.learning_rate!r}."
            )
        positive("alpha", self.alpha, zero=True)
        positive("learning_rate_init", self.learning_rate_init)
        positive("power_t", self.power_t, zero=True)
        positive("max_iter", self.max_iter, integral=True)
        positive("tol", self.tol, zero=True)
        positive("momentum", self.momentum, zero=True)
        if not (isinstance(self.n_iter_no_change, float) and self.n_iter_no_change == np.inf):
            positive("n_iter_no_change", self.n_iter_no_change, integral=True)
        positive("epsilon", self.epsilon)
        if self.momentum > 1:
            raise ValueError(f"momentum must be <= 1, got {self.momentum!r}.")
        for name in ("beta_1", "beta_2"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or not 0 <= cast(float, v) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {v!r}.")
        if not isinstance(self.validation_fraction, numbers.Real) or not (
            0 < self.validation_fraction < 1
        ):
            raise ValueError(
                f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}."
            )
        if not isinstance(self.dropout, numbers.Real) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}.")
        if self.batch_size != "auto":
            positive("batch_size", self.batch_size, integral=True)

    # ----- the network ------------------------------------------------------

    def _build(self, layer_units: list[int], dtype: np.dtype,
               rng: np.random.RandomState | None = None) -> nn.Sequential:
        """A Sequential of Linear / activation (/ Dropout) layers.

        With ``rng``, Glorot-uniform initial values are drawn from it in
        scikit-learn's order (per layer: the (fan_in, fan_out) weight matrix,
        then the bias), so a given ``random_state`` starts both libraries from
        the same weights. Without it, the weights come from ``coefs_`` /
        ``intercepts_`` (unpickling).
        """
        # Glorot & Bengio (2010): keep activations' variance roughly constant across
        # layers; the logistic function's smaller slope calls for a smaller range.
        factor = 2.0 if self.activation == "logistic" else 6.0
        layers: list[nn.Module] = []
        n_layers = len(layer_units) - 1
        for i in range(n_layers):
            fan_in, fan_out = layer_units[i], layer_units[i + 1]
            if rng is not None:
                bound = np.sqrt(factor / (fan_in + fan_out))
                w = rng.uniform(-bound, bound, (fan_in, fan_out))
                b = rng.uniform(-bound, bound, fan_out)
            else:
                w, b = self.coefs_[i], self.intercepts_[i]
            lin = nn.Linear(fan_in, fan_out, dtype=dtype)
            with no_grad():
                # chainrule stores (out, in), as PyTorch does; coefs_ show (in, out)
                lin.weight.data[...] = np.asarray(w).T
                _bias(lin).data[...] = b
            layers.append(lin)
            if i < n_layers - 1:
                layers.append(_ACTIVATIONS[self.activation]())
                if self.dropout > 0:
                    layers.append(nn.Dropout(self.dropout, generator=self._dropout_rng))
        return nn.Sequential(*layers)

    def _linears(self) -> list[nn.Linear]:
        return [m for m in self.model_ if isinstance(m, nn.Linear)]

    def _sync_arrays(self) -> None:
        """Publish the weights as NumPy copies in scikit-learn's layout."""
        lins = self._linears()
        self.coefs_ = [lin.weight.data.T.copy() for lin in lins]
        self.intercepts_ = [_bias(lin).data.copy() for lin in lins]

    def _load_arrays(self) -> None:
        """Copy ``coefs_`` / ``intercepts_`` into the network (they may have been edited)."""
        with no_grad():
            for lin, w, b in zip(self._linears(), self.coefs_, self.intercepts_):
                lin.weight.data[...] = np.asarray(w).T
                _bias(lin).data[...] = b

    def _forward(self, X: np.ndarray) -> np.ndarray:
        """Network outputs (logits or regression values) for validated ``X``, in eval mode."""
        self._load_arrays()
        self.model_.eval()
        with no_grad():
            out = self.model_(Tensor(np.asarray(X, dtype=self._dtype)))
        return out.data

    def _make_optimizer(self) -> Any:
        params = list(self.model_.parameters())
        if self.solver == "adam":
            return make_optimizer("adam", params, lr=self.learning_rate_init,
                                  betas=(self.beta_1, self.beta_2), eps=self.epsilon)
        # Nesterov needs some momentum to look ahead with; without it, plain SGD
        return make_optimizer("sgd", params, lr=self.learning_rate_init,
                              momentum=self.momentum, nesterov=bool(self.nesterovs_momentum))

    def _spec(self) -> ModelSpec:
        """The fitted network as a model spec (what export and save use)."""
        classifier = isinstance(self, ClassifierMixin)
        classes = [c.item() if isinstance(c, np.generic) else c
                   for c in self.classes_] if classifier else None
        out = getattr(self, "out_activation_", "identity")
        spec = ModelSpec(
            task="classification" if classifier else "regression",
            n_features=int(self._units[0]), n_outputs=int(self.n_outputs_),
            hidden=self._units[1:-1], activation=self.activation, dropout=self.dropout,
            target={"classes": classes, "output": out,
                    "multilabel": classifier and not self._single_label()},
            training={"optimizer": self.solver, "lr": float(self.learning_rate_init),
                      "batch_size": 0 if self.batch_size == "auto" else int(self.batch_size),
                      "epochs": int(self.max_iter), "patience": None, "val_size": None,
                      "seed": None},
            data={"trained_by": type(self).__name__},
        )
        spec.architecture = self.model_.get_config()
        return spec

    @property
    def model_spec_(self) -> ModelSpec:
        check_is_fitted(self)
        return self._spec()

    def save(self, path: Any) -> Any:
        """Write the fitted network and its spec as a chainrule checkpoint
        (``cr.load_predictor(path)`` then predicts with it, no scikit-learn needed)."""
        from .io import save

        check_is_fitted(self)
        self._load_arrays()
        return save(self.model_, path, metadata={"spec": self._spec().to_dict()})

    def _set_lr(self, lr: float) -> None:
        for group in self._optimizer.param_groups:
            group["lr"] = lr

    # ----- training ---------------------------------------------------------

    def _fit(self, X: Any, y: Any, incremental: bool, classes: Any = None) -> _BaseMLP:
        self._check_params()
        hidden = self._hidden_sizes()
        first = not hasattr(self, "model_") or (not self.warm_start and not incremental)
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")

        X, y = _validate_data(self, X, y, multi_output=True, dtype=(np.float64, np.float32),
                              reset=first, y_numeric=not isinstance(self, ClassifierMixin))
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        target = self._encode_targets(y, first=first, incremental=incremental, classes=classes)
        n_samples, n_features = X.shape

        self._random_state = check_random_state(self.random_state)
        if first:
            self._dtype = X.dtype
            self.n_outputs_ = target.shape[1]
            units = [n_features, *hidden, self.n_outputs_]
            self.n_layers_ = len(units)
            self._units = units
            self._dropout_rng = None
            self.model_ = self._build(units, self._dtype, self._random_state)
            if self.dropout > 0:
                # dropout's own stream, seeded after the weights are drawn so that
                # the initial weights still match scikit-learn's for a random_state
                seed = int(self._random_state.randint(np.iinfo(np.int32).max))
                self._dropout_rng = np.random.default_rng(seed)
                for m in self.model_:
                    if isinstance(m, nn.Dropout):
                        m.generator = self._dropout_rng
            self.n_iter_ = 0
            self.t_ = 0
            self.loss_curve_: list[float] = []
            self._start_tracking()
            self._sync_arrays()
        else:
            self._load_arrays()
            if self.early_stopping != (self.validation_scores_ is not None):
                # early_stopping was switched between warm-started fits: track
                # what it watches now from here (scikit-learn fails on this)
                self._start_tracking()
        X = X.astype(self._dtype, copy=False)
        if not incremental or getattr(self, "_optimizer", None) is None:
            self._optimizer = self._make_optimizer()
            self._lr = float(self.learning_rate_init)
        self._train(X, target, incremental)

        self._sync_arrays()
        if not all(np.isfinite(a).all() for a in (*self.coefs_, *self.intercepts_)):
            raise ValueError(
                "Solver produced non-finite parameter weights. The input data may contain "
                "large values and need to be preprocessed."
            )
        return self

    def _start_tracking(self) -> None:
        """Start what ``early_stopping`` watches (the validation score, else the
        training loss) from nothing."""
        self._no_improvement_count = 0
        self.__dict__.pop("_best_weights", None)
        self.validation_scores_: list[float] | None = None
        self.validation_loss_curve_: list[float] | None = None
        self.best_validation_score_: float | None = None
        self.best_loss_: float | None = None
        if self.early_stopping:
            self.validation_scores_ = []
            self.validation_loss_curve_ = []
            self.best_validation_score_ = -np.inf
        else:
            self.best_loss_ = np.inf

    def _split_validation(self, X: np.ndarray, target: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        stratify = None
        if isinstance(self, ClassifierMixin) and self._single_label():
            labels = target.argmax(axis=1) if target.shape[1] > 1 else target[:, 0]
            # stratify when every class can appear on both sides
            if np.bincount(labels.astype(np.int64)).min(initial=2) >= 2 or \
                    np.unique(labels).size == 1:
                stratify = labels
        try:
            X_tr, X_val, t_tr, t_val = train_test_split(
                X, target, random_state=self._random_state,
                test_size=self.validation_fraction, stratify=stratify)
        except ValueError:
            X_tr, X_val, t_tr, t_val = train_test_split(
                X, target, random_state=self._random_state,
                test_size=self.validation_fraction)
        if X_val.shape[0] < 2:
            raise ValueError(
                "The validation set is too small. Increase 'validation_fraction' or the "
                "size of your dataset."
            )
        return X_tr, X_val, t_tr, t_val

    def _penalty(self, n: int) -> Tensor | None:
        """scikit-learn's L2 term: alpha / 2 * sum of squared weights / batch size."""
        if self.alpha == 0:
            return None
        first, *rest = self._linears()  # the network has at least one layer
        total = (first.weight * first.weight).sum()
        for lin in rest:
            total = total + (lin.weight * lin.weight).sum()
        return total * (0.5 * self.alpha / n)

    def _train(self, X: np.ndarray, target: np.ndarray, incremental: bool) -> None:
        # -- set-up: validation split, batch size --------------------------------
        X_val = t_val = None
        if self.early_stopping:
            X, X_val, target, t_val = self._split_validation(X, target)
        n = X.shape[0]
        if self.batch_size == "auto":
            batch = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. "
                              "It is going to be clipped", stacklevel=4)
            batch = int(np.clip(self.batch_size, 1, n))
        if self.early_stopping and not hasattr(self, "_best_weights"):
            # scikit-learn starts from the initial weights as the "best" ones
            self._best_weights = self._weights()
        self.n_iter_ = 0
        epochs = 1 if incremental else int(self.max_iter)
        rules = _SklearnRules(self, X_val, t_val, incremental, n)
        if getattr(self, "out_activation_", None) == "softmax":
            target = target.argmax(axis=1)  # class indices: what cross_entropy takes
        # -- the epochs: chainrule's own training loop ----------------------------
        fit(self.model_, self._batch_loss, self._optimizer,
            _Batches(X, target, batch, self.shuffle, self._random_state), epochs=epochs,
            callbacks=[rules], metrics=None, progress=False, compile="auto")
        self.model_.eval()
        if self.early_stopping:
            # keep the weights of the best validation epoch, as scikit-learn does
            self._set_weights(self._best_weights)
        if rules.warn_max_iter:
            warnings.warn(
                f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and "
                "the optimization hasn't converged yet.",
                ConvergenceWarning,
                stacklevel=4,
            )

    def _batch_loss(self, out: Tensor, target: Any) -> Tensor:
        """The batch loss scikit-learn minimises: data loss + its L2 penalty.

        ``target`` is the batch's own Tensor, used as it is (no NumPy work on
        it here), so that a step replayed by ``cr.compile`` reads each new
        batch's targets."""
        loss = self._data_loss(out, target)
        penalty = self._penalty(out.shape[0])
        return loss if penalty is None else loss + penalty

    def _weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(lin.weight.data.copy(), _bias(lin).data.copy()) for lin in self._linears()]

    def _set_weights(self, weights: list[tuple[np.ndarray, np.ndarray]]) -> None:
        with no_grad():
            for lin, (w, b) in zip(self._linears(), weights):
                lin.weight.data[...] = w
                _bias(lin).data[...] = b

    def _track_loss(self) -> None:
        last, best = self.loss_curve_[-1], self.best_loss_
        assert best is not None  # early_stopping=False: _start_tracking set it
        if last > best - self.tol:
            self._no_improvement_count += 1
        else:
            self._no_improvement_count = 0
        self.best_loss_ = min(best, last)

    def _track_validation(self, X_val: np.ndarray, t_val: np.ndarray) -> bool:
        """Record the validation loss and score; False when the outputs are not finite
        (a diverged fit: the score is NaN and training stops)."""
        scores, losses = self.validation_scores_, self.validation_loss_curve_
        best = self.best_validation_score_
        # early_stopping=True: _start_tracking set them
        assert scores is not None and losses is not None and best is not None
        self.model_.eval()
        with no_grad():
            out = self.model_(Tensor(X_val))
        finite = bool(np.isfinite(out.data).all())
        if finite:
            losses.append(float(self._data_loss(out, t_val).item()))
            score = self._score_encoded(X_val, t_val)
        else:
            losses.append(float("nan"))
            score = float("nan")
        scores.append(score)
        if self.verbose:
            print(f"Validation score: {score:f}")
        if score < best + self.tol:
            self._no_improvement_count += 1
        else:
            self._no_improvement_count = 0
        if score > best:
            self.best_validation_score_ = score
            self._best_weights = self._weights()
        return finite

    # ----- pickling ---------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # Only NumPy arrays and plain values are pickled: the network is
        # rebuilt from coefs_ / intercepts_, the optimizer from its state_dict.
        state = self.__dict__.copy()
        state.pop("model_", None)
        opt = state.pop("_optimizer", None)
        if opt is not None:
            state["_optimizer_state"] = opt.state_dict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        opt_state = state.pop("_optimizer_state", None)
        self.__dict__.update(state)
        self._optimizer = None
        if hasattr(self, "coefs_") and hasattr(self, "_units"):
            self.model_ = self._build(self._units, self._dtype)
            self.model_.eval()
            if opt_state is not None:
                self._optimizer = self._make_optimizer()
                self._optimizer.load_state_dict(opt_state)


# --------------------------------------------------------------------------
# Classifier
# --------------------------------------------------------------------------


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier trained by chainrule (scikit-learn API).

    Minimises the log-loss with Adam or SGD. Parameters have scikit-learn's
    names and defaults (see ``sklearn.neural_network.MLPClassifier``).

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default (100,)
        Units per hidden layer.
    activation : {'relu', 'tanh', 'logistic', 'identity', 'leaky_relu'}, default 'relu'
        Hidden-layer activation ('leaky_relu' is an extra).
    solver : {'adam', 'sgd'}, default 'adam'
    alpha : float, default 1e-4
        L2 penalty: ``alpha / 2 * sum(||W||^2) / batch_size`` is added to each
        batch's loss (weights only, not biases), as in scikit-learn.
    batch_size : int or 'auto', default 'auto'
        'auto' is ``min(200, n_samples)``.
    learning_rate : {'constant', 'invscaling', 'adaptive'}, default 'constant'
        Step-size schedule, for ``solver='sgd'`` only.
    learning_rate_init : float, default 1e-3
    power_t : float, default 0.5
        Exponent of 'invscaling': ``lr = learning_rate_init / (t + 1) ** power_t``,
        ``t`` the number of samples seen.
    max_iter : int, default 200
        Epochs (passes over the data).
    shuffle : bool, default True
    random_state : int, RandomState or None
        Initial weights, shuffling, the validation split and dropout masks.
    tol : float, default 1e-4
    verbose : bool, default False
        Print the loss after every epoch.
    warm_start : bool, default False
        ``fit`` continues from the current weights.
    momentum : float, default 0.9
        For 'sgd'.
    nesterovs_momentum : bool, default True
        For 'sgd' with momentum > 0.
    early_stopping : bool, default False
        Hold out ``validation_fraction`` of the data (stratified) and stop when
        the validation accuracy has not improved by ``tol`` for
        ``n_iter_no_change`` epochs; keep the best epoch's weights.
    validation_fraction : float, default 0.1
    beta_1, beta_2, epsilon : float
        Adam's coefficients (0.9, 0.999, 1e-8).
    n_iter_no_change : int, default 10
    dropout : float, default 0.0
        Probability of zeroing each hidden unit during training (inverted
        dropout, nothing to rescale at prediction). Not in scikit-learn.

    Attributes
    ----------
    classes_ : ndarray (n_classes,)
    n_features_in_ : int
    feature_names_in_ : ndarray, when X had string column names
    loss_ : float
        The last epoch's mean training loss (with the penalty).
    loss_curve_ : list of float
        One value per epoch.
    best_loss_ : float or None
        Lowest training loss (None with ``early_stopping``).
    validation_scores_ : list of float or None
        Validation accuracy per epoch, with ``early_stopping``.
    validation_loss_curve_ : list of float or None
        Validation log-loss per epoch (without the penalty), with ``early_stopping``.
    best_validation_score_ : float or None
    n_iter_ : int
        Epochs run by the last call.
    t_ : int
        Samples seen in training.
    coefs_ : list of ndarray, shape (n_in, n_out) per layer
    intercepts_ : list of ndarray, shape (n_out,) per layer
        NumPy copies in scikit-learn's layout (edits are used by predict).
    n_layers_, n_outputs_ : int
    out_activation_ : str
        'softmax' (several classes) or 'logistic' (two classes, multi-label).
    model_ : chainrule.nn.Sequential
        The trained network (logits out); ``cr.save(clf.model_, path)`` stores it.

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> pipe = make_pipeline(StandardScaler(), MLPClassifier(random_state=0))
    >>> pipe.fit(X_train, y_train).score(X_test, y_test)     # doctest: +SKIP
    """

    def _single_label(self) -> bool:
        return self._label_binarizer.y_type_ != "multilabel-indicator"

    def _encode_targets(self, y: np.ndarray, *, first: bool, incremental: bool,
                        classes: Any = None) -> np.ndarray:
        if first and incremental:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            lb = LabelBinarizer()
            if type_of_target(y) == "multilabel-indicator":
                lb.fit(y)
            else:
                lb.fit(np.asarray(classes))
                extra = np.setdiff1d(unique_labels(y), lb.classes_)
                if len(extra):
                    # scikit-learn's message: labels outside `classes` are an error
                    raise ValueError(
                        f"`y` has classes not in `self.classes_`. `self.classes_` has "
                        f"{lb.classes_}. 'y' has {unique_labels(y)}."
                    )
            self._label_binarizer = lb
            self.classes_ = lb.classes_
        elif first:
            self._label_binarizer = LabelBinarizer().fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            found = unique_labels(y)
            if self.warm_start and not incremental:
                if set(found) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in "
                        f"the previous call to fit. Previously got {self.classes_}, `y` has "
                        f"{found}"
                    )
            elif len(np.setdiff1d(found, self.classes_)):
                raise ValueError(
                    f"`y` has classes not in `self.classes_`. `self.classes_` has "
                    f"{self.classes_}. 'y' has {found}."
                )
        if first:
            kind = self._label_binarizer.y_type_
            self.out_activation_ = "softmax" if kind == "multiclass" else "logistic"
        # 0/1 indicator columns (one column for two classes, one per label)
        return self._label_binarizer.transform(y).astype(np.float64)

    def _data_loss(self, out: Tensor, target: Any) -> Tensor:
        if self.out_activation_ == "softmax":
            # softmax + log-loss fused: the gradient is (p - onehot) / n, the notes' a^L - y
            labels = target if np.ndim(target) == 1 else np.asarray(target).argmax(axis=1)
            return F.cross_entropy(out, labels)
        # one logistic unit per column; scikit-learn sums over columns, averages over rows
        return F.binary_cross_entropy_with_logits(out, target, reduction="sum") * (
            1.0 / out.shape[0])

    def _proba(self, out: np.ndarray) -> np.ndarray:
        return probabilities(out, self.out_activation_).astype(out.dtype, copy=False)

    def _score_encoded(self, X: np.ndarray, target: np.ndarray) -> float:
        with no_grad():
            out = self.model_(Tensor(X)).data
        pred = self._label_binarizer.inverse_transform(self._proba(out))
        true = self._label_binarizer.inverse_transform(target)
        return float(accuracy_score(true, pred))

    def fit(self, X: Any, y: Any) -> MLPClassifier:
        """Train on ``X`` (n_samples, n_features) and labels ``y`` (n_samples,) or
        a multi-label indicator matrix (n_samples, n_labels). Returns ``self``."""
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> MLPClassifier:
        """One epoch over ``(X, y)``, continuing from the current state.

        ``classes`` (all labels that will ever appear) is required on the first call.
        """
        first_call = not hasattr(self, "classes_") or not hasattr(self, "model_")
        if first_call and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        if not first_call and classes is not None and not np.array_equal(
            np.unique(classes), self.classes_
        ):
            raise ValueError(
                f"`classes={np.unique(classes)!r}` is not the same as on the first call to "
                f"partial_fit, which was {self.classes_!r}"
            )
        return self._fit(X, y, incremental=True, classes=classes)

    def _validated(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return _validate_data(self, X, dtype=(np.float64, np.float32), reset=False)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (n_samples, n_classes), columns in ``classes_`` order."""
        out = self._proba(self._forward(self._validated(X)))
        if self.n_outputs_ == 1 and self._single_label():
            p = out.ravel()
            return np.column_stack([1.0 - p, p])
        return out

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Logarithm of :meth:`predict_proba`."""
        return np.log(self.predict_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels, shape (n_samples,) (or (n_samples, n_labels) for multi-label)."""
        proba = self._proba(self._forward(self._validated(X)))
        if self.n_outputs_ == 1:
            proba = proba.ravel()
        return self._label_binarizer.inverse_transform(proba)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


# --------------------------------------------------------------------------
# Regressor
# --------------------------------------------------------------------------


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor trained by chainrule (scikit-learn API).

    Minimises half the mean squared error (plus the L2 penalty) with Adam or
    SGD; the output layer is linear. Parameters and attributes are those of
    :class:`MLPClassifier` (without ``classes_`` and probabilities), with
    ``out_activation_ = 'identity'``; with ``early_stopping`` the validation
    score is R^2.

    >>> reg = MLPRegressor(hidden_layer_sizes=(32,), max_iter=500, random_state=0)
    >>> reg.fit(X, y).predict(X[:3])           # doctest: +SKIP
    """

    def _single_label(self) -> bool:
        return False

    def _encode_targets(self, y: np.ndarray, *, first: bool, incremental: bool,
                        classes: Any = None) -> np.ndarray:
        if first:
            self.out_activation_ = "identity"
        y2 = y.reshape(-1, 1) if y.ndim == 1 else y
        if not first and y2.shape[1] != self.n_outputs_:
            raise ValueError(
                f"y has {y2.shape[1]} outputs, but the model was fitted with {self.n_outputs_}"
            )
        return y2

    def _data_loss(self, out: Tensor, target: Any) -> Tensor:
        # half the squared error, averaged over samples and outputs (scikit-learn's)
        return F.mse_loss(out, target) * 0.5

    def _score_encoded(self, X: np.ndarray, target: np.ndarray) -> float:
        with no_grad():
            out = self.model_(Tensor(X)).data
        return float(r2_score(target, out))

    def fit(self, X: Any, y: Any) -> MLPRegressor:
        """Train on ``X`` (n_samples, n_features) and targets ``y`` (n_samples,) or
        (n_samples, n_outputs). Returns ``self``."""
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X: Any, y: Any) -> MLPRegressor:
        """One epoch over ``(X, y)``, continuing from the current state."""
        return self._fit(X, y, incremental=True)

    def predict(self, X: Any) -> np.ndarray:
        """Predictions, shape (n_samples,) or (n_samples, n_outputs)."""
        check_is_fitted(self)
        X = _validate_data(self, X, dtype=(np.float64, np.float32), reset=False)
        out = self._forward(X)
        return out.ravel() if self.n_outputs_ == 1 else out


# --------------------------------------------------------------------------
# scikit-learn's batch order and epoch rules, as chainrule.fit's data and callback
# --------------------------------------------------------------------------


class _Batches:
    """scikit-learn's mini-batches: the row order reshuffled every epoch with the
    estimator's RandomState (``sklearn.utils.shuffle``), then ``gen_batches``."""

    def __init__(self, X: np.ndarray, target: np.ndarray, batch: int, shuffle_rows: bool,
                 rng: np.random.RandomState) -> None:
        self.X, self.target, self.batch = X, target, batch
        self.shuffle_rows, self.rng = shuffle_rows, rng
        self.idx = np.arange(X.shape[0])

    def __iter__(self) -> Any:
        if self.shuffle_rows:
            self.idx = shuffle(self.idx, random_state=self.rng)
        for sl in gen_batches(self.X.shape[0], self.batch):
            rows = self.idx[sl]
            yield Tensor._const(self.X[rows]), Tensor._const(self.target[rows])


class _SklearnRules(Callback):
    """The end of each epoch as scikit-learn has it: bookkeeping, the stopping rule
    (training loss, or validation score with ``early_stopping``), the learning-rate
    schedules of ``solver='sgd'``."""

    def __init__(self, est: _BaseMLP, X_val: Any, t_val: Any, incremental: bool,
                 n: int) -> None:
        self.est, self.X_val, self.t_val = est, X_val, t_val
        self.incremental, self.n = incremental, n
        self.warn_max_iter = False

    def on_epoch_end(self, trainer: Any, logs: dict[str, Any]) -> Any:
        est = self.est
        est.n_iter_ += 1
        est.t_ += self.n
        est.loss_ = float(logs["loss"])
        est.loss_curve_.append(est.loss_)
        if est.verbose:
            print(f"Iteration {est.n_iter_}, loss = {est.loss_:.8f}")
        if est.early_stopping:
            if not est._track_validation(self.X_val, self.t_val):
                return "the validation outputs are not finite (training diverged)"
        else:
            est._track_loss()
        if est.solver == "sgd" and est.learning_rate == "invscaling":
            est._lr = float(est.learning_rate_init) / (est.t_ + 1) ** est.power_t
            est._set_lr(est._lr)
        if est._no_improvement_count > est.n_iter_no_change:
            what = "Validation score" if est.early_stopping else "Training loss"
            msg = (f"{what} did not improve more than tol={est.tol:f} for "
                   f"{est.n_iter_no_change} consecutive epochs.")
            if est.solver == "sgd" and est.learning_rate == "adaptive" and est._lr > 1e-6:
                # 'adaptive': divide the step by 5 and carry on, until it is tiny
                est._lr /= 5.0
                est._set_lr(est._lr)
                est._no_improvement_count = 0
                if est.verbose:
                    print(f"{msg} Setting learning rate to {est._lr:f}")
            else:
                if est.verbose:
                    print(f"{msg} Stopping.")
                return msg
        if not self.incremental and est.n_iter_ == est.max_iter:
            self.warn_max_iter = True
        return None
