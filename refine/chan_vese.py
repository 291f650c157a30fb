"""Chan–Vese level-set segmentation compiled with Numba, bit-compatible with scikit-image.

The paper (section "The refinement") refines the ROI boundary by minimizing

    E(C) = mu1 * ∫_inside(C) |I - c1|² + mu2 * ∫_outside(C) |I - c2|² + alpha * length(C)

This module solves it with exactly the semi-implicit scheme of ``skimage.segmentation.chan_vese``
(Getreuer, IPOL 2012, eq. 22 with scikit-image's Jacobi-style update) in float64:

* the image is shifted to min 0 and divided by its max (when the max is not 0);
* c1, c2 are the means of the image where phi > 0 and where phi <= 0 (sharp Heaviside), summed in
  numpy's pairwise order so they match to the last bit;
* delta(phi) = 1 / (1 + phi²) (eps = 1), curvature coefficients 1 / sqrt(eta + ...) with eta = 1e-16,
  edge-replicated borders, time step dt = 0.5;
* the loop stops when the RMS change of phi between two iterations is <= tol, or after
  max_iterations.

Parameter mapping to scikit-image: ``mu1 = lambda1``, ``mu2 = lambda2``, ``alpha = mu`` (length weight).
scikit-image's ``tol`` and ``dt`` keep their names; pass our initial level set as its
``init_level_set``. With the same float64 image, parameters, initial level set and iteration count
the two give the same level set (bitwise on the tested inputs) and so the same mask. (scikit-image
computes float32 inputs in float32; we always use float64.) The only work we skip is scikit-image's
per-iteration energy bookkeeping, which does not influence the result.

Entry points: :func:`refine_roi` (the pipeline's step: a crop around the area-filtered ROI, level set
started from the ROI), :func:`segment_image` (the paper's "No ROI-CNN" variant: whole image from a
checkerboard), :func:`chan_vese` (any explicit initial level set), :func:`warm_up`.
The compiled kernel releases the GIL (``nogil=True``) so it overlaps with inference threads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from scipy.ndimage import distance_transform_edt

from refine._validate import as_count, as_finite_float, as_image, as_mask

#: scikit-image's time step (``dt``).
DEFAULT_DT = 0.5
#: scikit-image's default tolerance on the RMS level-set change between iterations.
DEFAULT_TOL = 1e-3
#: Regularizer inside the curvature square roots (scikit-image's ``eta``).
ETA = 1e-16

_JIT = {"nogil": True, "cache": True, "error_model": "numpy", "fastmath": False}


@dataclass(frozen=True)
class ChanVeseResult:
    """Outcome of one Chan–Vese run.

    mask: bool (H, W), same shape as the image given to the entry point (phi > 0 inside the box,
        False outside it).
    iterations: iterations actually run.
    converged: True when the run stopped because the RMS level-set change fell to <= tol
        (False when it hit max_iterations, or when there was nothing to evolve).
    final_change: RMS change of phi in the last iteration (inf when no iteration ran).
    level_set: final phi (float64) over the box that was evolved; shape (y1 - y0, x1 - x0).
    box: (y0, y1, x0, x1), half-open pixel bounds of the evolved region in the image, or None when
        nothing was evolved (empty ROI).
    """

    mask: np.ndarray
    iterations: int
    converged: bool
    final_change: float
    level_set: np.ndarray
    box: tuple[int, int, int, int] | None


# ----------------------------------------------------------------------------------------------------
# Numba kernels
# ----------------------------------------------------------------------------------------------------


#: Depth of the explicit stack used by the pairwise sums; 64 levels cover any array that fits in memory.
_STACK = 64
#: numpy's pairwise-summation leaf size (PW_BLOCKSIZE).
_PW_BLOCK = 128


@njit(inline="always", **_JIT)
def _terms(v: float, new: float, old: float) -> tuple[float, float, float, float]:  # pragma: no cover
    """The four summands at one pixel: image*H, image*(1-H), (new - old)² and H (H = new > 0)."""
    h = 1.0 if new > 0.0 else 0.0
    d = new - old
    return v * h, v * (1.0 - h), d * d, h


@intrinsic
def _leaf_rows(typingctx, img, new, old, lo, rows):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Vectorized body of numpy's pairwise leaf for the four sums of :func:`_terms`.

    Treats [lo, lo + 8*rows) as ``rows`` rows of 8 lanes (rows >= 1): lane j accumulates elements
    lo + j, lo + j + 8, ... in order, exactly like numpy's 8 accumulators, then the lanes are combined
    as ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)). Written as LLVM IR on <8 x double> because LLVM does not
    vectorize the 8-accumulator pattern on its own without fastmath, and fastmath would reorder the
    additions. img/new/old must be C-contiguous 1-D float64 arrays.
    """
    arr = types.Array(types.float64, 1, "C")
    if not (img == arr and new == arr and old == arr):
        return None
    sig = types.UniTuple(types.float64, 4)(img, new, old, types.int64, types.int64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        vty = ir.VectorType(ir.DoubleType(), 8)
        i64 = ir.IntType(64)
        arys = [context.make_array(signature.args[j])(context, builder, args[j]) for j in range(3)]
        lo_v, rows_v = args[3], args[4]
        zero = ir.Constant(vty, [0.0] * 8)
        one = ir.Constant(vty, [1.0] * 8)

        def terms(off):  # type: ignore[no-untyped-def]
            v, nw, od = (
                builder.load(builder.bitcast(builder.gep(a.data, [off]), vty.as_pointer()), align=8)
                for a in arys
            )
            h = builder.select(builder.fcmp_ordered(">", nw, zero), one, zero)
            d = builder.fsub(nw, od)
            return builder.fmul(v, h), builder.fmul(v, builder.fsub(one, h)), builder.fmul(d, d), h

        acc = [cgutils.alloca_once(builder, vty) for _ in range(4)]
        for slot, t in zip(acc, terms(lo_v), strict=True):
            builder.store(t, slot)
        with cgutils.for_range_slice(builder, ir.Constant(i64, 1), rows_v, ir.Constant(i64, 1)) as (k, _):
            off = builder.add(lo_v, builder.mul(k, ir.Constant(i64, 8)))
            for slot, t in zip(acc, terms(off), strict=True):
                builder.store(builder.fadd(builder.load(slot), t), slot)
        outs = []
        for slot in acc:
            vec = builder.load(slot)
            r = [builder.extract_element(vec, ir.Constant(ir.IntType(32), j)) for j in range(8)]
            left = builder.fadd(builder.fadd(r[0], r[1]), builder.fadd(r[2], r[3]))
            right = builder.fadd(builder.fadd(r[4], r[5]), builder.fadd(r[6], r[7]))
            outs.append(builder.fadd(left, right))
        return context.make_tuple(builder, signature.return_type, outs)

    return sig, codegen


@njit(**_JIT)
def _leaf(
    img: np.ndarray, new: np.ndarray, old: np.ndarray, lo: int, n: int
) -> tuple[float, float, float, float]:  # pragma: no cover - compiled
    """numpy's pairwise-sum leaf (n <= 128) for the four sums of :func:`_terms`, side by side.

    Below 8 elements a plain loop; else 8 accumulators (element i goes to lane i % 8, see
    :func:`_leaf_rows`), then the n % 8 tail added one by one.
    """
    a = 0.0
    b = 0.0
    c = 0.0
    d = 0.0
    start = lo
    if n >= 8:
        rows = n // 8
        a, b, c, d = _leaf_rows(img, new, old, lo, rows)
        start = lo + 8 * rows
    for i in range(start, lo + n):
        ta, tb, tc, td = _terms(img[i], new[i], old[i])
        a += ta
        b += tb
        c += tc
        d += td
    return a, b, c, d


@njit(**_JIT)
def _plan(n: int) -> np.ndarray:  # pragma: no cover - compiled
    """numpy's pairwise-summation tree for n elements, flattened in post-order.

    numpy sums n <= 128 elements in one leaf; above that it splits into n2 = n//2 - (n//2 % 8) and
    n - n2, recursively, and adds left + right. Each row of the result is a leaf (lo, length) or, as
    (-1, 0), "add the last two values". Built once per run with an explicit stack, because Numba's
    on-disk cache cannot hold recursive functions.
    """
    frames = np.empty((_STACK, 3), dtype=np.int64)  # lo, length, phase
    count = 0
    for fill in range(2):  # first pass counts the rows, second writes them
        ops = np.empty((count, 2), dtype=np.int64)
        k = 0
        frames[0, 0] = 0
        frames[0, 1] = n
        frames[0, 2] = 0
        top = 1
        while top > 0:
            f = top - 1
            lo = frames[f, 0]
            m = frames[f, 1]
            if m <= _PW_BLOCK:
                if fill:
                    ops[k, 0] = lo
                    ops[k, 1] = m
                k += 1
                top -= 1
                continue
            n2 = m // 2
            n2 -= n2 % 8
            phase = frames[f, 2]
            if phase == 0:  # descend into the left part
                frames[f, 2] = 1
                frames[top, 0] = lo
                frames[top, 1] = n2
                frames[top, 2] = 0
                top += 1
            elif phase == 1:  # then the right part
                frames[f, 2] = 2
                frames[top, 0] = lo + n2
                frames[top, 1] = m - n2
                frames[top, 2] = 0
                top += 1
            else:  # both parts done: left + right
                if fill:
                    ops[k, 0] = -1
                    ops[k, 1] = 0
                k += 1
                top -= 1
        count = k
    return ops


@njit(**_JIT)
def _pairwise(
    img: np.ndarray, new: np.ndarray, old: np.ndarray, ops: np.ndarray, values: np.ndarray
) -> tuple[float, float, float, float]:  # pragma: no cover - compiled
    """sum(img*H), sum(img*(1-H)), sum((new-old)²) and sum(H) (H = new > 0) in numpy's order.

    Following numpy's pairwise summation (the tree from :func:`_plan`) makes c1, c2 and the RMS change
    equal to scikit-image's to the last bit. values is (_STACK, 4) float64 scratch.
    """
    nv = 0
    for k in range(ops.shape[0]):
        lo = ops[k, 0]
        if lo >= 0:
            a, b, c, d = _leaf(img, new, old, lo, ops[k, 1])
            values[nv, 0] = a
            values[nv, 1] = b
            values[nv, 2] = c
            values[nv, 3] = d
            nv += 1
        else:
            for j in range(4):
                values[nv - 2, j] = values[nv - 2, j] + values[nv - 1, j]
            nv -= 1
    return values[0, 0], values[0, 1], values[0, 2], values[0, 3]


@njit(inline="always", **_JIT)
def _step(
    p: float,
    xp: float,
    xn: float,
    yp: float,
    yn: float,
    v: float,
    c1: float,
    c2: float,
    mu: float,
    neg_lambda1: float,
    lambda2: float,
    dt: float,
    mudt: float,
) -> float:  # pragma: no cover - compiled
    """One pixel of scikit-image's update, same operations in the same order (eta = 1e-16, eps = 1).

    p is phi at the pixel, xp/xn/yp/yn its right/left/lower/upper neighbours (edge-replicated).
    """
    eta = 1e-16
    phixp = xp - p
    phixn = p - xn
    phix0 = (xp - xn) / 2.0
    phiyp = yp - p
    phiyn = p - yn
    phiy0 = (yp - yn) / 2.0
    C1 = 1.0 / np.sqrt(eta + phixp * phixp + phiy0 * phiy0)
    C2 = 1.0 / np.sqrt(eta + phixn * phixn + phiy0 * phiy0)
    C3 = 1.0 / np.sqrt(eta + phix0 * phix0 + phiyp * phiyp)
    C4 = 1.0 / np.sqrt(eta + phix0 * phix0 + phiyn * phiyn)
    K = xp * C1 + xn * C2 + yp * C3 + yn * C4
    d1 = v - c1
    d2 = v - c2
    diff = neg_lambda1 * (d1 * d1) + lambda2 * (d2 * d2)
    delta = 1.0 / (1.0 + p * p)
    new = p + (dt * delta) * (mu * K + diff)
    return new / (1.0 + mudt * delta * (C1 + C2 + C3 + C4))


@njit(**_JIT)
def _border(
    cur: np.ndarray,
    nxt: np.ndarray,
    img: np.ndarray,
    y: int,
    x: int,
    H: int,
    W: int,
    c1: float,
    c2: float,
    mu: float,
    neg_lambda1: float,
    lambda2: float,
    dt: float,
    mudt: float,
) -> None:  # pragma: no cover - compiled
    """Update one border pixel; a missing neighbour is the pixel itself (numpy's pad mode='edge')."""
    k = y * W + x
    p = cur[k]
    xp = cur[k + 1] if x < W - 1 else p
    xn = cur[k - 1] if x > 0 else p
    yp = cur[k + W] if y < H - 1 else p
    yn = cur[k - W] if y > 0 else p
    nxt[k] = _step(p, xp, xn, yp, yn, img[k], c1, c2, mu, neg_lambda1, lambda2, dt, mudt)


@njit(**_JIT)
def _update_run(
    c: np.ndarray,
    right: np.ndarray,
    left: np.ndarray,
    down: np.ndarray,
    up: np.ndarray,
    v: np.ndarray,
    out: np.ndarray,
    c1: float,
    c2: float,
    mu: float,
    neg_lambda1: float,
    lambda2: float,
    dt: float,
    mudt: float,
) -> None:  # pragma: no cover - compiled
    """out[i] = update of c[i] given its neighbours; 1-D views, one write stream, no branch: vectorizes."""
    for i in range(c.shape[0]):
        out[i] = _step(
            c[i], right[i], left[i], down[i], up[i], v[i], c1, c2, mu, neg_lambda1, lambda2, dt, mudt
        )


@njit(**_JIT)
def _update(
    cur: np.ndarray,
    nxt: np.ndarray,
    img: np.ndarray,
    H: int,
    W: int,
    c1: float,
    c2: float,
    mu: float,
    neg_lambda1: float,
    lambda2: float,
    dt: float,
    mudt: float,
) -> None:  # pragma: no cover - compiled
    """One Jacobi update of the flat (H*W) level set cur into nxt, edge-replicated borders.

    Most of the work is one long vectorized run over rows 1..H-2 (its first/last-column results use
    wrapped neighbours and are overwritten afterwards); the first/last rows and columns then get
    their own vectorized runs with the replicated neighbour, and the four corners a scalar update.
    """
    n = H * W
    args = (c1, c2, mu, neg_lambda1, lambda2, dt, mudt)
    if H < 3 or W < 3:  # tiny images: every pixel is a border pixel
        for y in range(H):
            for x in range(W):
                _border(cur, nxt, img, y, x, H, W, *args)
        return
    # rows 1..H-2 as one run (k = W+1 .. n-W-2)
    lo, hi = W + 1, n - W - 1
    _update_run(
        cur[lo:hi], cur[lo + 1 : hi + 1], cur[lo - 1 : hi - 1], cur[lo + W : hi + W], cur[lo - W : hi - W],
        img[lo:hi], nxt[lo:hi], *args,
    )
    # first row (no row above: up = itself) and last row (down = itself), x = 1..W-2
    top = cur[1 : W - 1]
    _update_run(
        top, cur[2:W], cur[0 : W - 2], cur[W + 1 : 2 * W - 1], top, img[1 : W - 1], nxt[1 : W - 1], *args
    )
    b = n - W
    bot = cur[b + 1 : n - 1]
    _update_run(
        bot, cur[b + 2 : n], cur[b : n - 2], bot, cur[b - W + 1 : b - 1], img[b + 1 : n - 1],
        nxt[b + 1 : n - 1], *args,
    )
    # first column (left = itself) and last column (right = itself), y = 1..H-2, strided views
    col = cur[W : n - W : W]
    _update_run(
        col, cur[W + 1 : n - W + 1 : W], col, cur[2 * W : n : W], cur[0 : n - 2 * W : W], img[W : n - W : W],
        nxt[W : n - W : W], *args,
    )
    e = W - 1
    col = cur[W + e : n - W + e : W]
    _update_run(
        col, col, cur[W + e - 1 : n - W + e - 1 : W], cur[2 * W + e : n : W], cur[e : n - 2 * W + e : W],
        img[W + e : n - W + e : W], nxt[W + e : n - W + e : W], *args,
    )
    for y, x in ((0, 0), (0, W - 1), (H - 1, 0), (H - 1, W - 1)):
        _border(cur, nxt, img, y, x, H, W, *args)


@njit(**_JIT)
def _cv_kernel(
    img: np.ndarray,
    phi_a: np.ndarray,
    phi_b: np.ndarray,
    H: int,
    W: int,
    ops: np.ndarray,
    values: np.ndarray,
    mu: float,
    lambda1: float,
    lambda2: float,
    dt: float,
    tol: float,
    max_iterations: int,
) -> tuple[int, float, bool]:  # pragma: no cover - compiled
    """Evolve phi_a (flat, row-major H*W) with phi_b as the other buffer of the Jacobi update.

    img is the normalized image, flat; ops is :func:`_plan` (H*W), values (_STACK, 4) scratch.
    Returns (iterations, last RMS change, result is in phi_a). Nothing is allocated per iteration.
    """
    n = H * W
    mudt = mu * dt  # scikit-image evaluates mu * dt * delta * (...) left to right
    nl1 = -lambda1
    cur = phi_a
    nxt = phi_b
    # Sums for the first iteration (the change sum is unused: old = new).
    s_in, s_out, _, count = _pairwise(img, cur, cur, ops, values)
    it = 0
    phivar = tol + 1.0
    while phivar > tol and it < max_iterations:
        # sum(H) and sum(1 - H) are whole numbers, exact in any order, so n - count is numpy's sum(1 - H)
        c1 = s_in / count if count != 0.0 else s_in
        c2 = s_out / (n - count) if n - count != 0.0 else s_out
        _update(cur, nxt, img, H, W, c1, c2, mu, nl1, lambda2, dt, mudt)
        # Sums for the next iteration and the RMS change, one pass, numpy's order.
        s_in, s_out, sq, count = _pairwise(img, nxt, cur, ops, values)
        phivar = np.sqrt(sq / n)
        cur, nxt = nxt, cur
        it += 1
    return it, phivar, it % 2 == 0


# ----------------------------------------------------------------------------------------------------
# Level-set initializations
# ----------------------------------------------------------------------------------------------------


def checkerboard_level_set(shape: tuple[int, int], square_size: float = 5.0) -> np.ndarray:
    """sin(pi*y/s) * sin(pi*x/s) (float64), scikit-image's 'checkerboard' start (s = 5 px there)."""
    h, w = (int(v) for v in shape)
    if h <= 0 or w <= 0:
        raise ValueError(f"shape must be positive, got {shape}")
    square_size = as_finite_float(square_size, "square_size", minimum=np.finfo(float).tiny)
    # Same operations as skimage.segmentation._chan_vese._cv_checkerboard, so the values are identical.
    yv = np.arange(h, dtype=np.float64).reshape(h, 1)
    xv = np.arange(w, dtype=np.float64)
    sf = np.pi / square_size
    xv *= sf
    yv *= sf
    return np.sin(yv) * np.sin(xv)


#: Default divisor (px) of the signed distance that starts :func:`refine_roi` (see mask_to_level_set).
DEFAULT_LEVEL_SET_SCALE = 8.0


def mask_to_level_set(mask: np.ndarray, scale: float = DEFAULT_LEVEL_SET_SCALE) -> np.ndarray:
    """Signed Euclidean distance to the mask outline divided by ``scale`` px (float64), > 0 inside.

    Inside pixels get d/scale with d >= 1 the distance (px) to the nearest outside pixel, outside
    pixels -d/scale; so phi > 0 reproduces the mask exactly and phi is never 0. A full mask gives
    phi = 1/scale everywhere; an empty mask raises ValueError (there is no outline to start from).

    Why a scaled distance: delta(phi) = 1/(1+phi²) decays with |phi|, so the first iterations move the
    contour near where it started instead of re-segmenting the whole crop, which is what refining a
    CNN outline needs; dividing by ``scale`` lets the front travel a few pixels within the paper's 50
    iterations on scikit-image's [0, 1]-normalized intensities (scale 1 barely moves it; see
    docs/refine.md for the measurement that chose 8).
    """
    m = as_mask(mask, "mask")
    scale = as_finite_float(scale, "scale", minimum=np.finfo(float).tiny)
    if not m.any():
        raise ValueError("mask is empty: a level set cannot be started from it")
    if m.all():
        # No outside pixel to measure from: a flat positive level set keeps phi > 0 == mask.
        return np.full(m.shape, 1.0 / scale, dtype=np.float64)
    return (distance_transform_edt(m) - distance_transform_edt(~m)) / scale


# ----------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------


def _normalize(img: np.ndarray) -> np.ndarray:
    """scikit-image's normalization: subtract the min, divide by the max if it is not 0."""
    img = img - np.min(img)
    top = np.max(img)
    if top != 0:
        img = img / top
    return img


def _run(
    img: np.ndarray,
    phi0: np.ndarray,
    mu1: float,
    mu2: float,
    alpha: float,
    dt: float,
    max_iterations: int,
    tol: float,
) -> tuple[np.ndarray, int, float]:
    h, w = img.shape
    phi_a = np.array(phi0, dtype=np.float64, order="C").reshape(-1)
    phi_b = np.empty_like(phi_a)
    ops = _plan(h * w)
    values = np.empty((_STACK, 4), dtype=np.float64)
    it, phivar, in_a = _cv_kernel(
        np.ascontiguousarray(img).reshape(-1), phi_a, phi_b, h, w, ops, values,
        alpha, mu1, mu2, dt, tol, max_iterations,
    )
    phi = (phi_a if in_a else phi_b).reshape(h, w)
    return phi, int(it), float(phivar)


def _check_params(
    mu1: float, mu2: float, alpha: float, dt: float, max_iterations: int, tol: float
) -> tuple[float, float, float, float, int, float]:
    return (
        as_finite_float(mu1, "mu1", minimum=0.0),
        as_finite_float(mu2, "mu2", minimum=0.0),
        as_finite_float(alpha, "alpha", minimum=0.0),
        as_finite_float(dt, "dt", minimum=np.finfo(float).tiny),
        as_count(max_iterations, "max_iterations"),
        as_finite_float(tol, "tol", minimum=0.0),
    )


def chan_vese(
    image: np.ndarray,
    init_level_set: np.ndarray,
    *,
    mu1: float = 1.0,
    mu2: float = 1.0,
    alpha: float = 1.0,
    dt: float = DEFAULT_DT,
    max_iterations: int = 50,
    tol: float = DEFAULT_TOL,
) -> ChanVeseResult:
    """Chan–Vese on the whole image from an explicit initial level set (phi > 0 is inside).

    Equals ``skimage.segmentation.chan_vese(image, mu=alpha, lambda1=mu1, lambda2=mu2, tol=tol,
    max_num_iter=max_iterations, dt=dt, init_level_set=init_level_set)`` for float64/integer images.

    image: (H, W) integer or float, any range (normalized to [0, 1] internally).
    init_level_set: (H, W) finite floats.
    mu1, mu2: inside/outside data-term weights (default 1). alpha: length weight (default 1).
    dt: time step (default 0.5). max_iterations: default 50. tol: stop when the RMS change of phi
    between iterations is <= tol (default 1e-3; 0 runs exactly max_iterations unless phi stops moving).
    """
    img = as_image(image)
    phi0 = as_image(init_level_set, "init_level_set")
    if phi0.shape != img.shape:
        raise ValueError(f"init_level_set has shape {phi0.shape} but the image has shape {img.shape}")
    mu1, mu2, alpha, dt, max_iterations, tol = _check_params(mu1, mu2, alpha, dt, max_iterations, tol)
    phi, it, phivar = _run(_normalize(img), phi0, mu1, mu2, alpha, dt, max_iterations, tol)
    return ChanVeseResult(
        mask=phi > 0,
        iterations=it,
        converged=bool(it > 0 and phivar <= tol),
        final_change=phivar if it > 0 else float("inf"),
        level_set=phi,
        box=(0, img.shape[0], 0, img.shape[1]),
    )


def crop_box(mask: np.ndarray, margin: int) -> tuple[int, int, int, int] | None:
    """Half-open (y0, y1, x0, x1) bounding box of the mask grown by margin px, clipped to the image."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return (
        max(0, int(ys[0]) - margin),
        min(h, int(ys[-1]) + 1 + margin),
        max(0, int(xs[0]) - margin),
        min(w, int(xs[-1]) + 1 + margin),
    )


def refine_roi(
    image: np.ndarray,
    roi_mask: np.ndarray,
    *,
    margin: int = 16,
    mu1: float = 1.0,
    mu2: float = 1.0,
    alpha: float = 1.0,
    dt: float = DEFAULT_DT,
    max_iterations: int = 50,
    tol: float = DEFAULT_TOL,
    level_set_scale: float = DEFAULT_LEVEL_SET_SCALE,
) -> ChanVeseResult:
    """Refine an ROI outline: Chan–Vese on a crop around it, level set started from the ROI.

    The crop is the ROI's bounding box grown by ``margin`` px on every side (clipped to the image);
    it is normalized on its own (as scikit-image would normalize the crop) and the level set starts
    as the signed distance to the ROI outline divided by ``level_set_scale`` px (default 8, see
    :func:`mask_to_level_set`). The returned mask has the full image size (False outside the crop).

    image: (H, W) uint8/integer or float. roi_mask: (H, W) bool or integer (nonzero = ROI), usually
    from :func:`refine.area_filter.area_filter`. An empty ROI returns an empty mask with
    iterations=0, converged=False and box=None. Defaults follow the paper: mu1 = mu2 = alpha = 1,
    50 iterations; dt = 0.5 and tol = 1e-3 as scikit-image.
    """
    img = as_image(image)
    roi = as_mask(roi_mask, "roi_mask", shape=img.shape)
    margin = as_count(margin, "margin")
    mu1, mu2, alpha, dt, max_iterations, tol = _check_params(mu1, mu2, alpha, dt, max_iterations, tol)
    box = crop_box(roi, margin)
    if box is None:
        return ChanVeseResult(
            mask=np.zeros(img.shape, dtype=bool),
            iterations=0,
            converged=False,
            final_change=float("inf"),
            level_set=np.zeros((0, 0), dtype=np.float64),
            box=None,
        )
    y0, y1, x0, x1 = box
    crop = img[y0:y1, x0:x1]
    phi0 = mask_to_level_set(roi[y0:y1, x0:x1], level_set_scale)
    phi, it, phivar = _run(_normalize(crop), phi0, mu1, mu2, alpha, dt, max_iterations, tol)
    mask = np.zeros(img.shape, dtype=bool)
    mask[y0:y1, x0:x1] = phi > 0
    return ChanVeseResult(
        mask=mask,
        iterations=it,
        converged=bool(it > 0 and phivar <= tol),
        final_change=phivar if it > 0 else float("inf"),
        level_set=phi,
        box=box,
    )


def segment_image(
    image: np.ndarray,
    *,
    max_iterations: int = 1000,
    mu1: float = 1.0,
    mu2: float = 1.0,
    alpha: float = 1.0,
    dt: float = DEFAULT_DT,
    tol: float = DEFAULT_TOL,
    square_size: float = 5.0,
) -> ChanVeseResult:
    """Segment the whole image from scikit-image's checkerboard start (the paper's "No ROI-CNN" variant).

    Defaults: 1000 iterations, mu1 = mu2 = alpha = 1, dt = 0.5, tol = 1e-3, checkerboard squares of
    5 px. Note that Chan–Vese labels the region with mean c1 as inside; which of lesion/background
    ends up True depends on the start, so callers may need to pick the component they want.
    """
    img = as_image(image)
    return chan_vese(
        img,
        checkerboard_level_set(img.shape, square_size),
        mu1=mu1,
        mu2=mu2,
        alpha=alpha,
        dt=dt,
        max_iterations=max_iterations,
        tol=tol,
    )


def warm_up() -> float:
    """Compile the kernels (or load them from Numba's on-disk cache); returns the seconds it took.

    Call once at start so the first frame does not pay for compilation.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    img = rng.random((12, 10))
    roi = np.zeros((12, 10), dtype=bool)
    roi[3:8, 2:7] = True
    refine_roi(img, roi, margin=2, max_iterations=2, tol=0.0)
    return time.perf_counter() - t0
