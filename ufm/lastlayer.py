"""A trained network's last layer as a point of the UFM, eq. (7): input handling only (docs/theory.md §11).

A network gives W (K×d), optionally b (K,), and the features h_i ∈ R^d of its N training samples with their labels,
in any order and any class sizes, usually as an (N, d) array of rows (PyTorch, JAX). The UFM's H is d×N with
class-major columns (problem.py). :func:`last_layer` checks everything once, before any work (each failure a
:class:`UFMInputError` naming the array or flag, the value and what is allowed), and sorts the samples by label
(stably). Objective (7), the NC metrics and the train accuracy are all sums over samples, so the order changes none
of them; only the columns' order is fixed. Arrays come through ``np.asarray``: numpy, JAX, a CPU PyTorch tensor or
anything with ``__array__``, without importing a framework.
"""

from __future__ import annotations

import dataclasses
import zipfile
from typing import Optional

import numpy as np

from .errors import UFMInputError

#: features as rows (N, d): the PyTorch/JAX habit; or as columns (d, N): the UFM's own H
LAYOUTS = ("rows", "columns")
#: the arrays an analysis file holds, as ``ufm analyze`` names them (the .npz keys and the --W/--H/--labels/--b flags)
ARRAYS = ("W", "H", "labels", "b")


@dataclasses.dataclass(frozen=True, eq=False)
class LastLayer:
    """A checked last layer: W (K×d), H (d×N, class-major columns), labels (N, sorted), b (K,) or None.

    ``order`` maps the UFM's columns back to the user's samples (column j is the user's sample ``order[j]``)."""

    W: np.ndarray
    H: np.ndarray
    labels: np.ndarray
    b: Optional[np.ndarray]
    layout: str
    order: np.ndarray

    @property
    def K(self) -> int:
        return self.W.shape[0]

    @property
    def d(self) -> int:
        return self.W.shape[1]

    @property
    def N(self) -> int:
        return self.H.shape[1]

    @property
    def counts(self) -> tuple[int, ...]:
        """The K class sizes n_k."""
        return tuple(int(c) for c in np.bincount(self.labels, minlength=self.K))


def _array(name: str, value) -> np.ndarray:
    """``np.asarray(value)``, or one line saying why it is not an array of numbers (a CUDA tensor, a ragged list)."""
    if value is None:
        raise UFMInputError(name, None, "is required (an array)")
    try:
        a = np.asarray(value)
    except Exception as exc:           # e.g. a CUDA tensor: "can't convert cuda:0 device type tensor to numpy"
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UFMInputError(name, type(value).__name__, f"must convert to a numpy array ({type(exc).__name__}: "
                            f"{first}); move GPU tensors to the CPU first (.cpu() / jax.device_get)") from None
    if a.dtype.kind not in "iuf":
        raise UFMInputError(name, f"dtype {a.dtype}", "must hold real numbers (integer or floating point)")
    return a


def _finite(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    bad = ~np.isfinite(a)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise UFMInputError(name, f"{int(bad.sum())} non-finite entries (first {a[where]} at index {where})",
                            "every entry must be finite (no NaN or inf)")
    return a


def _check_W(W) -> np.ndarray:
    W = _array("W", W)
    if W.ndim != 2:
        raise UFMInputError("W", f"shape {W.shape}", "must be 2-D, (K, d): one row per class")
    if W.shape[0] < 2 or W.shape[1] < 1:
        raise UFMInputError("W", f"shape {W.shape}", "must be (K, d) with K ≥ 2 classes (rows) and d ≥ 1 columns")
    return _finite("W", W)


def _check_labels(labels, W_shape) -> np.ndarray:
    K = W_shape[0]
    y = _array("labels", labels)
    if y.ndim != 1:
        raise UFMInputError("labels", f"shape {y.shape}", "must be 1-D, (N,): one integer class label per sample")
    if y.size == 0:
        raise UFMInputError("labels", "shape (0,)", "needs at least one sample per class")
    if y.dtype.kind == "f":
        bad = ~(np.isfinite(y) & (y == np.round(y)))
        if bad.any():
            i = int(np.argmax(bad))
            raise UFMInputError("labels", f"{y[i]!r} at index {i}", "must be integers (class indices 0..K−1)")
    y = y.astype(np.int64)
    lo, hi = int(y.min()), int(y.max())
    transposed = (f"; W has shape {W_shape}: if it is (d, K), transpose it"
                  if W_shape[1] != W_shape[0] and hi + 1 == W_shape[1] else "")
    if lo < 0:
        raise UFMInputError("labels", f"{lo} at index {int(np.argmin(y))}", f"must be in [0, K) = [0, {K}) (class "
                            "indices; K is the number of rows of W)")
    if hi >= K:
        raise UFMInputError("labels", f"{hi} at index {int(np.argmax(y))}", f"must be in [0, K) = [0, {K}): K is "
                            f"inferred from W's {K} rows" + transposed)
    counts = np.bincount(y, minlength=K)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        more = f" (and {empty.size - 1} more)" if empty.size > 1 else ""
        raise UFMInputError("labels", f"no sample of class {int(empty[0])}{more}", f"every class 0..{K - 1} of W's "
                            f"K = {K} rows needs at least one sample (n_k ≥ 1 in eq. 7)" + transposed)
    return y


def _check_H(H, layout: str, N: int, d: int) -> np.ndarray:
    """H as d×N columns, whatever the layout; N == d is not ambiguous: the layout given decides."""
    H = _array("H", H)
    want, other = ((N, d), (d, N)) if layout == "rows" else ((d, N), (N, d))
    shape_words = "(N, d)" if layout == "rows" else "(d, N)"
    if H.ndim != 2:
        raise UFMInputError("H", f"shape {H.shape}", f"must be 2-D, {shape_words} = {want} with --layout {layout}")
    if H.shape != want:
        if H.shape == other:
            flip = "columns" if layout == "rows" else "rows"
            hint = f"it looks like {flip} ({'d, N' if flip == 'columns' else 'N, d'}): pass --layout {flip}"
        else:
            hint = f"N = {N} is the number of labels and d = {d} the number of columns of W"
        raise UFMInputError("H", f"shape {H.shape}", f"with --layout {layout} it must be {shape_words} = {want}; {hint}")
    H = _finite("H", H)
    return H.T if layout == "rows" else H


def _check_b(b, K: int) -> Optional[np.ndarray]:
    if b is None:
        return None
    b = _array("b", b)
    if b.shape != (K,):
        raise UFMInputError("b", f"shape {b.shape}", f"must have shape (K,) = ({K},): one bias per row of W (or no b)")
    return _finite("b", b)


def last_layer(W, H, labels, b=None, *, layout: str = "rows") -> LastLayer:
    """Check (W, H, labels, b) and sort the samples by label (stable): the UFM point of docs/theory.md §11.

    W is K×d (K inferred from its rows), labels N integers in [0, K) with every class present, H (N, d) rows
    (``layout="rows"``, default) or (d, N) columns (``layout="columns"``), b (K,) or None (no bias). Every entry
    must be finite. Raises :class:`UFMInputError` (one line: the array, the value, what is allowed)."""
    if layout not in LAYOUTS:
        raise UFMInputError("--layout", layout, f"use {' or '.join(LAYOUTS)} (features as (N, d) rows or (d, N) columns)")
    W = _check_W(W)
    y = _check_labels(labels, W.shape)
    Hc = _check_H(H, layout, y.size, W.shape[1])
    b = _check_b(b, W.shape[0])
    order = np.argsort(y, kind="stable")
    return LastLayer(W=W, H=np.ascontiguousarray(Hc[:, order]), labels=y[order], b=b, layout=layout, order=order)


def _load_npy(flag: str, path) -> np.ndarray:
    from .paths import check_input_file

    path = check_input_file(flag, path)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UFMInputError(flag, path, f"is not a readable .npy array file ({type(exc).__name__}: "
                            f"{(str(exc).splitlines() or [''])[0][:160]})") from None


def load_arrays(path=None, **files) -> dict:
    """The arrays ``ufm analyze`` reads: W, H, labels and optionally b from the .npz ``path``, each replaced by the
    .npy file named in ``files`` (``W=``, ``H=``, ``labels=``, ``b=``, as the --W/--H/--labels/--b flags). Returns
    ``{"W", "H", "labels", "b"}`` (b None when absent); checks only that files hold arrays, not their shapes."""
    from .paths import check_input_file

    unknown = sorted(set(files) - set(ARRAYS))
    if unknown:
        raise UFMInputError(unknown[0], files[unknown[0]], f"the arrays are {', '.join(ARRAYS)}")
    arrays = dict.fromkeys(ARRAYS)
    if path is not None:
        path = check_input_file("FILE", path)
        try:
            z = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise UFMInputError("FILE", path, "must be an .npz archive (numpy.savez) holding arrays W, H, labels and "
                                f"optionally b ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]})") from None
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise UFMInputError("FILE", path, "is a single .npy array; an .npz archive (numpy.savez) holds W, H, labels "
                                "(and b), or name .npy files with --W, --H, --labels")
        with z:
            keys = set(z.files)
            for name in ARRAYS:
                if name in keys and files.get(name) is None:
                    try:
                        arrays[name] = z[name]
                    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                        raise UFMInputError("FILE", path, f"array {name!r} cannot be read ({type(exc).__name__}: "
                                            f"{(str(exc).splitlines() or [''])[0][:160]}); it must be a plain numeric "
                                            "array (no pickled objects)") from None
        missing = [name for name in ("W", "H", "labels") if arrays[name] is None and files.get(name) is None]
        if missing:
            raise UFMInputError("FILE", path, f"has no array {missing[0]!r} (its arrays: "
                                f"{', '.join(sorted(keys)) or 'none'}); it needs W (K×d), H (features), labels (N) "
                                "and optionally b (K), or name the missing one with its flag, e.g. "
                                f"--{missing[0]} {missing[0]}.npy")
    for name, file in files.items():
        if file is not None:
            arrays[name] = _load_npy(f"--{name}", file)
    if path is None:
        missing = [name for name in ("W", "H", "labels") if arrays[name] is None]
        if missing:
            raise UFMInputError(f"--{missing[0]}", None, "give an .npz FILE holding W, H, labels (and b), or name "
                                "each array's .npy file: --W, --H, --labels (and --b)")
    return arrays
