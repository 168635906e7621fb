"""chainrule.sklearn: scikit-learn's estimator contract, and results that match its MLP."""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLPClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkMLPRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import chainrule as cr  # noqa: E402
from chainrule.sklearn import MLPClassifier, MLPRegressor  # noqa: E402


@pytest.fixture(autouse=True)
def _one_blas_thread():
    # These networks are tiny: a multi-threaded BLAS only adds contention
    # (tens of times slower on a busy two-core machine).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fn(*args, **kwargs)


# --------------------------------------------------------------------------
# scikit-learn's own estimator checks
# --------------------------------------------------------------------------


@parametrize_with_checks(
    # scikit-learn runs its own MLPs through these checks with max_iter=100
    [MLPClassifier(max_iter=100, random_state=0), MLPRegressor(max_iter=100, random_state=0)]
)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


# --------------------------------------------------------------------------
# Same objective, same initialisation, same shuffling as scikit-learn
# --------------------------------------------------------------------------


def test_classifier_follows_sklearn_loss_curve(digits):
    X_tr, X_te, y_tr, y_te = digits
    kw = dict(hidden_layer_sizes=(32,), max_iter=8, random_state=0, alpha=1e-3)
    ours = _quiet(MLPClassifier(**kw).fit, X_tr, y_tr)
    ref = _quiet(SkMLPClassifier(**kw).fit, X_tr, y_tr)
    # Only Adam's epsilon placement differs, so the curves agree closely.
    np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-3)
    for a, b in zip(ours.coefs_, ref.coefs_):
        assert a.shape == b.shape
    assert ours.n_layers_ == ref.n_layers_ == 3
    assert ours.out_activation_ == ref.out_activation_ == "softmax"


def test_initial_weights_equal_sklearn(digits):
    X_tr, _, y_tr, _ = digits
    ours = _quiet(MLPClassifier(hidden_layer_sizes=(7, 5), max_iter=1, random_state=3,
                                learning_rate_init=1e-12).fit, X_tr, y_tr)
    ref = _quiet(SkMLPClassifier(hidden_layer_sizes=(7, 5), max_iter=1, random_state=3,
                                 learning_rate_init=1e-12).fit, X_tr, y_tr)
    for a, b in zip(ours.coefs_ + ours.intercepts_, ref.coefs_ + ref.intercepts_):
        np.testing.assert_allclose(a, b, atol=1e-9)


def test_digits_accuracy_comparable_to_sklearn(digits):
    X_tr, X_te, y_tr, y_te = digits
    kw = dict(hidden_layer_sizes=(64,), max_iter=60, random_state=0)
    ours = _quiet(MLPClassifier(**kw).fit, X_tr, y_tr).score(X_te, y_te)
    ref = _quiet(SkMLPClassifier(**kw).fit, X_tr, y_tr).score(X_te, y_te)
    assert ours >= 0.95
    assert abs(ours - ref) <= 0.02


def test_regressor_follows_sklearn():
    X, y = make_regression(n_samples=120, n_features=5, noise=0.1, random_state=0)
    y = y / y.std()
    kw = dict(hidden_layer_sizes=(16,), max_iter=5, random_state=0, solver="sgd",
              learning_rate_init=0.01)
    ours = _quiet(MLPRegressor(**kw).fit, X, y)
    ref = _quiet(SkMLPRegressor(**kw).fit, X, y)
    np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-6)
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=1e-5, atol=1e-8)
    assert ours.predict(X).shape == (120,)


@pytest.mark.parametrize("learning_rate", ["invscaling", "adaptive"])
def test_sgd_schedules_follow_sklearn(learning_rate):
    X, y = make_regression(n_samples=80, n_features=4, noise=0.1, random_state=1)
    y = y / y.std()
    kw = dict(hidden_layer_sizes=(8,), max_iter=40, random_state=0, solver="sgd",
              learning_rate=learning_rate, learning_rate_init=0.05, n_iter_no_change=2,
              tol=1e-2, momentum=0.0)
    # Without momentum: scikit-learn's velocity stores lr * grad, PyTorch's (and
    # chainrule's) stores grad, so the two differ once the step size changes.
    ours = _quiet(MLPRegressor(**kw).fit, X, y)
    ref = _quiet(SkMLPRegressor(**kw).fit, X, y)
    assert ours.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-5)


# --------------------------------------------------------------------------
# Behaviour
# --------------------------------------------------------------------------


def test_fitted_attributes_and_proba(digits):
    X_tr, X_te, y_tr, y_te = digits
    clf = _quiet(MLPClassifier(hidden_layer_sizes=(20, 10), max_iter=5, random_state=0).fit,
                 X_tr, y_tr)
    assert list(clf.classes_) == list(range(10))
    assert clf.n_features_in_ == 64
    assert [c.shape for c in clf.coefs_] == [(64, 20), (20, 10), (10, 10)]
    assert [b.shape for b in clf.intercepts_] == [(20,), (10,), (10,)]
    assert len(clf.loss_curve_) == clf.n_iter_ == 5
    assert clf.best_loss_ == min(clf.loss_curve_)
    assert clf.validation_loss_curve_ is None
    p = clf.predict_proba(X_te)
    assert p.shape == (len(X_te), 10)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_array_equal(clf.predict(X_te), clf.classes_[p.argmax(axis=1)])
    assert isinstance(clf.model_, cr.nn.Sequential)


def test_string_labels_binary_and_multilabel():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = np.where(X[:, 0] > 0, "yes", "no")
    clf = _quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=50, random_state=0,
                               learning_rate_init=0.01).fit, X, y)
    assert clf.out_activation_ == "logistic"
    assert list(clf.classes_) == ["no", "yes"]
    assert clf.predict_proba(X).shape == (60, 2)
    assert (clf.predict(X) == y).mean() > 0.9
    Y = np.column_stack([X[:, 0] > 0, X[:, 1] > 0]).astype(int)
    ml = _quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=100, random_state=0,
                              learning_rate_init=0.01).fit, X, Y)
    assert ml.predict(X).shape == (60, 2)
    assert (ml.predict(X) == Y).mean() > 0.85


def test_early_stopping_records_validation(digits):
    X_tr, _, y_tr, _ = digits
    clf = MLPClassifier(hidden_layer_sizes=(32,), early_stopping=True, random_state=0,
                        n_iter_no_change=3, max_iter=200, learning_rate_init=0.01)
    clf.fit(X_tr, y_tr)
    assert clf.n_iter_ < 200
    assert clf.best_loss_ is None
    assert len(clf.validation_scores_) == len(clf.validation_loss_curve_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    with pytest.raises(ValueError, match="early_stopping"):
        clf.partial_fit(X_tr, y_tr)


def test_dropout_changes_training(digits):
    X_tr, X_te, y_tr, y_te = digits
    kw = dict(hidden_layer_sizes=(64,), max_iter=15, random_state=0, learning_rate_init=0.01)
    plain = _quiet(MLPClassifier(**kw).fit, X_tr, y_tr)
    drop = _quiet(MLPClassifier(dropout=0.5, **kw).fit, X_tr, y_tr)
    again = _quiet(MLPClassifier(dropout=0.5, **kw).fit, X_tr, y_tr)
    # the same initial weights, different updates; noisier, so a higher training loss
    assert drop.loss_curve_[-1] > plain.loss_curve_[-1]
    assert not np.allclose(drop.coefs_[0], plain.coefs_[0])
    # reproducible for a fixed random_state, and inactive at prediction time
    np.testing.assert_array_equal(drop.coefs_[0], again.coefs_[0])
    np.testing.assert_array_equal(drop.predict_proba(X_te), drop.predict_proba(X_te))
    assert drop.score(X_te, y_te) > 0.9
    assert any(isinstance(m, cr.nn.Dropout) for m in drop.model_)


def test_partial_fit_and_warm_start(digits):
    X_tr, X_te, y_tr, y_te = digits
    clf = MLPClassifier(hidden_layer_sizes=(32,), random_state=0)
    with pytest.raises(ValueError, match="classes"):
        clf.partial_fit(X_tr, y_tr)
    for _ in range(5):
        clf.partial_fit(X_tr, y_tr, classes=np.arange(10))
    assert len(clf.loss_curve_) == 5
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert clf.t_ == 5 * len(X_tr)
    # pickling keeps the optimizer state: both copies continue identically
    twin = pickle.loads(pickle.dumps(clf))
    clf.partial_fit(X_tr, y_tr)
    twin.partial_fit(X_tr, y_tr)
    np.testing.assert_allclose(clf.coefs_[0], twin.coefs_[0])
    warm = MLPClassifier(hidden_layer_sizes=(32,), max_iter=3, warm_start=True, random_state=0)
    _quiet(warm.fit, X_tr, y_tr)
    first = warm.coefs_[0].copy()
    _quiet(warm.fit, X_tr, y_tr)
    assert len(warm.loss_curve_) == 6 and not np.allclose(first, warm.coefs_[0])


def test_edited_coefs_are_used(digits):
    X_tr, X_te, y_tr, _ = digits
    clf = _quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0).fit,
                 X_tr, y_tr)
    clf.coefs_[-1][:] = 0.0
    clf.intercepts_[-1][:] = np.arange(10.0)
    assert (clf.predict(X_te) == 9).all()


def test_pipeline_and_grid_search(digits):
    X_tr, X_te, y_tr, y_te = digits
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=15, random_state=0,
                                                        learning_rate_init=0.01))
    grid = GridSearchCV(
        pipe,
        {"mlpclassifier__hidden_layer_sizes": [(16,), (48,)],
         "mlpclassifier__alpha": [1e-4, 1e-2]},
        cv=2,
    )
    _quiet(grid.fit, X_tr[:600], y_tr[:600])
    assert set(grid.best_params_) == {"mlpclassifier__hidden_layer_sizes",
                                      "mlpclassifier__alpha"}
    assert grid.score(X_te, y_te) > 0.85
    assert clone(grid.best_estimator_).get_params()["mlpclassifier__max_iter"] == 15


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(solver="lbfgs"), "solver"),
        (dict(activation="swish"), "activation"),
        (dict(hidden_layer_sizes=(10, 0)), "hidden_layer_sizes"),
        (dict(dropout=1.0), "dropout"),
        (dict(alpha=-1.0), "alpha"),
        (dict(batch_size=0), "batch_size"),
        (dict(learning_rate="cyclic"), "learning_rate"),
        (dict(validation_fraction=1.5), "validation_fraction"),
    ],
)
def test_bad_parameters_raise_in_fit(params, match):
    X = np.zeros((10, 2))
    y = np.arange(10) % 2
    clf = MLPClassifier(**params)  # __init__ only stores
    with pytest.raises(ValueError, match=match):
        clf.fit(X, y)


def test_import_chainrule_does_not_import_sklearn():
    code = "import sys, chainrule; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_missing_sklearn_gives_install_hint():
    # A meta-path finder that hides scikit-learn, in a fresh interpreter.
    code = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'sklearn' or name.startswith('sklearn.'):\n"
        "            raise ImportError('hidden')\n"
        "sys.meta_path.insert(0, Hide())\n"
        "import chainrule as cr\n"
        "try:\n"
        "    cr.sklearn\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert 'pip install "chainrule[sklearn]"' in out.stdout


# --------------------------------------------------------------------------
# Cases ported from scikit-learn's sklearn/neural_network/tests/test_mlp.py
# (rewritten for chainrule's estimators), and the regressions
# --------------------------------------------------------------------------

X_TINY, Y_TINY = [[3, 2], [1, 6]], [1, 0]


@pytest.fixture(scope="module")
def digits_binary():
    X, y = load_digits(n_class=2, return_X_y=True)
    return X[:100] / 16.0, y[:100]


@pytest.fixture(scope="module")
def iris():
    from sklearn.datasets import load_iris

    return load_iris(return_X_y=True)


def test_partial_fit_labels_outside_classes_raise():
    # the regression: labels not in `classes` were silently encoded as no class
    clf = MLPClassifier(solver="sgd", random_state=0)
    with pytest.raises(ValueError, match="classes not in"):
        clf.partial_fit(X_TINY, Y_TINY, classes=[2])
    clf.partial_fit([[3, 2]], [0], classes=[0, 1])
    with pytest.raises(ValueError):
        clf.partial_fit([[3, 2]], [0], classes=[1, 2])
    with pytest.raises(ValueError, match="classes not in"):
        clf.partial_fit([[3, 2]], [5])


def test_partial_fit_unseen_classes_listed_in_classes():
    clf = MLPClassifier(random_state=0)
    clf.partial_fit([[1], [2], [3]], ["a", "b", "c"], classes=["a", "b", "c", "d"])
    clf.partial_fit([[4]], ["d"])
    assert clf.score([[1], [2], [3], [4]], ["a", "b", "c", "d"]) > 0


def test_partial_fit_equals_fit_for_sgd(digits_binary):
    X, y = digits_binary
    fitted = _quiet(MLPClassifier(solver="sgd", max_iter=20, random_state=1, tol=0,
                                  alpha=1e-5, learning_rate_init=0.2).fit, X, y)
    inc = MLPClassifier(solver="sgd", random_state=1, alpha=1e-5, learning_rate_init=0.2)
    for _ in range(20):
        inc.partial_fit(X, y, classes=np.unique(y))
    np.testing.assert_array_equal(fitted.predict(X), inc.predict(X))
    assert inc.score(X, y) > 0.95


def test_n_iter_no_change_counts_and_inf(digits_binary):
    X, y = digits_binary
    for n in (2, 5):
        clf = MLPClassifier(tol=0.01, max_iter=3000, solver="sgd", n_iter_no_change=n,
                            random_state=0).fit(X, y)
        assert clf._no_improvement_count == n + 1 and clf.n_iter_ < 3000
    # np.inf is accepted (the regression) and never stops training
    clf = _quiet(MLPClassifier(tol=1e9, max_iter=60, solver="sgd", n_iter_no_change=np.inf,
                               random_state=0).fit, X, y)
    assert clf.n_iter_ == 60
    assert clf._no_improvement_count == clf.n_iter_ - 1


def test_diverging_fit_with_early_stopping_records_nan_and_stops(iris):
    # the regression: this raised "Input contains NaN" from r2_score
    X, y = iris
    mlp = MLPRegressor(hidden_layer_sizes=100, activation="identity", solver="sgd",
                       learning_rate_init=1, max_iter=20, early_stopping=True,
                       n_iter_no_change=10, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(X, y)
    last = mlp.validation_scores_[-1]
    assert isinstance(last, float) and np.isnan(last)
    assert mlp.n_iter_ < 20  # it stopped at the divergence
    assert all(np.isfinite(c).all() for c in mlp.coefs_)  # the best weights are kept
    assert np.isfinite(mlp.predict(X)).all()


def test_nonfinite_weights_raise():
    rng = np.random.RandomState(0)
    X = np.finfo(np.float64).max * rng.uniform(size=(10, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="non-finite parameter weights"):
            MLPRegressor().fit(X, rng.standard_normal(10))


def test_shuffle_changes_training_only_when_on():
    X, y = make_regression(n_samples=50, n_features=5, random_state=0)

    def coefs(shuffle):
        m = MLPRegressor(hidden_layer_sizes=1, max_iter=1, batch_size=1, random_state=0,
                         shuffle=shuffle)
        return _quiet(m.fit, X, y).coefs_[0]

    np.testing.assert_array_equal(coefs(True), coefs(True))
    np.testing.assert_array_equal(coefs(False), coefs(False))
    assert not np.array_equal(coefs(True), coefs(False))


def test_tolerance_adaptive_rate_and_verbose(capsys):
    clf = MLPClassifier(tol=0.5, max_iter=3000, solver="sgd").fit(X_TINY, Y_TINY)
    assert clf.n_iter_ < clf.max_iter
    clf = MLPClassifier(tol=0.5, max_iter=3000, solver="sgd", learning_rate="adaptive",
                        random_state=0).fit(X_TINY, Y_TINY)
    assert clf.n_iter_ < clf.max_iter and clf._lr < 1e-6
    clf = MLPClassifier(solver="sgd", max_iter=2, verbose=10, hidden_layer_sizes=2)
    _quiet(clf.fit, X_TINY, Y_TINY)
    clf.partial_fit(X_TINY, Y_TINY)
    assert "Iteration" in capsys.readouterr().out


@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
def test_early_stopping_rules(Estimator, digits_binary, iris):
    X, y = digits_binary
    est = Estimator(tol=0.2, max_iter=3000, solver="sgd", early_stopping=True,
                    random_state=0).fit(X, y)
    assert est.n_iter_ < est.max_iter and est.best_loss_ is None
    assert max(est.validation_scores_) == est.best_validation_score_
    assert est.best_validation_score_ + 0.2 > est.validation_scores_[-1]
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        est.partial_fit(X, y)
    # warm start keeps recording validation scores
    Xi, yi = iris
    warm = Estimator(max_iter=5, random_state=0, warm_start=True, early_stopping=True)
    _quiet(warm.fit, Xi, yi)
    warm.set_params(max_iter=8)
    _quiet(warm.fit, Xi, yi)
    assert len(warm.validation_scores_) == 13


@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
def test_warm_start_across_an_early_stopping_switch(Estimator, iris):
    # switching early_stopping between warm-started fits starts tracking what
    # it now watches (scikit-learn 1.9 raises AttributeError/TypeError here)
    X, y = iris
    model = Estimator(max_iter=4, random_state=0, warm_start=True, n_iter_no_change=np.inf)
    _quiet(model.fit, X, y)
    assert model.validation_scores_ is None and np.isfinite(model.best_loss_)
    model.set_params(early_stopping=True)
    _quiet(model.fit, X, y)
    assert model.best_loss_ is None and len(model.validation_scores_) == 4
    assert model.best_validation_score_ == max(model.validation_scores_)
    assert len(model.loss_curve_) == 8  # the training history goes on
    model.set_params(early_stopping=False)
    _quiet(model.fit, X, y)
    assert model.validation_scores_ is None and model.best_validation_score_ is None
    assert model.best_loss_ == min(model.loss_curve_[8:])


@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
def test_warm_start_runs_max_iter_each_fit(Estimator, iris):
    X, y = iris
    model = Estimator(warm_start=True, max_iter=10, n_iter_no_change=np.inf, random_state=0)
    with pytest.warns(ConvergenceWarning):
        model.fit(X, y)
    assert model.n_iter_ == 10
    model.set_params(max_iter=20)
    with pytest.warns(ConvergenceWarning):
        model.fit(X, y)
    assert model.n_iter_ == 20


def test_small_validation_set_and_string_labels_with_early_stopping():
    from sklearn.datasets import make_classification

    X, y = make_regression(n_samples=2, n_features=5, random_state=0)
    with pytest.raises(ValueError, match="The validation set is too small"):
        MLPRegressor(early_stopping=True, random_state=0).fit(X, y)
    X, y = make_classification(n_samples=200, n_features=10, n_classes=3, n_informative=5,
                               random_state=42)
    y = np.array(["class_a", "class_b", "class_c"], dtype=object)[y]
    mlp = _quiet(MLPClassifier(early_stopping=True, max_iter=50, random_state=42).fit, X, y)
    assert len(mlp.validation_scores_) == mlp.n_iter_
    assert np.isfinite(mlp.validation_scores_).all()


def test_estimators_train_through_cr_fit_compiled(digits, monkeypatch):
    """The estimators run chainrule.fit (and its cr.compile replay), not a loop of their own."""
    import chainrule.training.loop as loop

    steps = []
    real = loop._maybe_compile

    def spy(step, compile, model, loss_fn):
        steps.append(real(step, compile, model, loss_fn))
        return steps[-1]

    monkeypatch.setattr(loop, "_maybe_compile", spy)
    X_tr, _, y_tr, _ = digits
    _quiet(MLPClassifier(max_iter=3, random_state=0).fit, X_tr, y_tr)
    assert steps and steps[-1].stats["replayed"] > 0 and steps[-1].unsupported is None


def test_estimator_save_load_predictor(digits, tmp_path):
    X_tr, X_te, y_tr, _ = digits
    names = np.array([f"digit-{k}" for k in range(10)], dtype=object)
    clf = _quiet(MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=0).fit,
                 X_tr, names[y_tr])
    path = clf.save(tmp_path / "clf.safetensors")
    pred = cr.load_predictor(path)
    np.testing.assert_array_equal(pred.predict(X_te), clf.predict(X_te))
    np.testing.assert_allclose(pred.predict_proba(X_te), clf.predict_proba(X_te), atol=1e-6)
    reg = _quiet(MLPRegressor(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit,
                 X_tr, y_tr.astype(float))
    pred = cr.load_predictor(reg.save(tmp_path / "reg.safetensors"))
    np.testing.assert_allclose(pred.predict(X_te), reg.predict(X_te), rtol=1e-5)
