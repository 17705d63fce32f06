"""Can a denoised frame be trusted?  Pure array checks behind ``asn2n report``.

- :func:`score_pair`: agreement with a ground truth, defined as the project's scorer
  defines it (psnr after an affine fit, psnr in input units, ssim, background
  artefacts after Otsu thresholding, foreground Dice).
- :func:`foreground_objects`: the objects of a foreground mask, and how many of them lie
  entirely in a given background (noise specks on a raw frame; invented structure on a
  denoised one).
- :func:`skeleton_stats`: fragments and branch length of the foreground's skeleton
  (filament continuity: noise breaks filaments into many short pieces).
- :func:`residual_checks`: whether ``raw - denoised`` looks like noise: its moments, its
  correlation with its neighbour, and a local-correlation map with the denoised
  image that is high where signal was taken out.

All take 2-D arrays in input units and return plain numbers or arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["otsu_mask", "score_pair", "foreground_objects", "skeleton_stats", "residual_checks",
           "STRUCTURE_THRESHOLD"]

#: Local correlation of the residual with the denoised image above which a pixel is
#: flagged as "signal removed" (pure noise gives |r| of about 1/window side).
STRUCTURE_THRESHOLD = 0.3
_MIN_OBJECT = 4  # pixels: smaller foreground specks are not counted as objects


def otsu_mask(img: NDArray[Any]) -> NDArray[np.bool_]:
    """Foreground by Otsu's threshold (empty for a constant image)."""
    from skimage.filters import threshold_otsu

    img = np.asarray(img, dtype=np.float64)
    if float(img.max()) == float(img.min()):
        return np.zeros(img.shape, bool)
    return img > threshold_otsu(img)


def _affine_fit(pred: NDArray[Any], gt: NDArray[Any]) -> NDArray[np.float64]:
    p, g = pred.ravel(), gt.ravel()
    pc = p - p.mean()
    var = float(pc @ pc)
    a = float(pc @ (g - g.mean())) / var if var > 0 else 0.0
    return a * pred + (g.mean() - a * p.mean())


def _psnr(x: NDArray[Any], gt: NDArray[Any], data_range: float) -> float:
    mse = float(np.mean((x - gt) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))


def _objects(mask: NDArray[np.bool_]) -> tuple[NDArray[np.int32], NDArray[np.int64]]:
    from scipy import ndimage as ndi

    labels, _ = ndi.label(mask, structure=np.ones((3, 3)))
    return labels, np.bincount(labels.ravel())


def _outside(labels: NDArray[np.int32], sizes: NDArray[np.int64], background: NDArray[np.bool_]) -> int:
    """Objects of at least :data:`_MIN_OBJECT` pixels lying entirely in ``background``."""
    touches = np.zeros(sizes.size, bool)
    touches[np.unique(labels[~background])] = True
    keep = (sizes >= _MIN_OBJECT) & ~touches
    keep[0] = False
    return int(keep.sum())


def score_pair(pred: NDArray[Any], gt: NDArray[Any]) -> dict[str, float]:
    """A denoised frame against its ground truth (both 2-D, same shape).

    Returns
    -------
    dict
        ``psnr`` (after a least-squares affine fit of ``pred`` onto ``gt``), ``psnr_raw``
        (units kept), ``ssim`` (fitted), ``false_fg`` (share of true background, farther
        than 3 px from the truth's Otsu foreground, that ``pred``'s Otsu foreground
        covers), ``false_obj`` (objects of >= 4 px entirely in true background, per
        megapixel), ``fg_dice``.  Data range: ``gt``'s.
    """
    from scipy import ndimage as ndi
    from skimage.metrics import structural_similarity

    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"need two 2-D images of one shape, got {pred.shape} and {gt.shape}")
    rng = float(gt.max() - gt.min()) or 1.0
    fitted = _affine_fit(pred, gt)
    fg_gt = otsu_mask(gt)
    bg = ~ndi.binary_dilation(fg_gt, iterations=3)
    fg_pred = otsu_mask(pred)
    labels, sizes = _objects(fg_pred)
    inter = float(np.logical_and(fg_pred, fg_gt).sum())
    denom = float(fg_pred.sum() + fg_gt.sum())
    return {
        "psnr": _psnr(fitted, gt, rng),
        "psnr_raw": _psnr(pred, gt, rng),
        "ssim": float(structural_similarity(fitted, gt, data_range=rng)),
        "false_fg": float(fg_pred[bg].mean()) if bg.any() else 0.0,
        "false_obj": _outside(labels, sizes, bg) / (gt.size / 1e6),
        "fg_dice": 2 * inter / denom if denom else 1.0,
    }


def foreground_objects(mask: NDArray[np.bool_], background: NDArray[np.bool_] | None = None) -> dict[str, float]:
    """Objects (8-connected, >= 4 px) of a foreground mask (e.g. :func:`otsu_mask`).

    Parameters
    ----------
    mask : ndarray of bool (H, W)
    background : ndarray of bool (H, W), optional
        Where there should be nothing (e.g. weak-background patches, or the truth's
        background); objects entirely inside it are counted as ``background_objects``.

    Returns
    -------
    dict
        ``foreground_fraction``, ``objects``, ``specks`` (foreground pieces under 4 px),
        and with ``background``: ``background_objects`` and ``background_objects_per_mpx``.
    """
    mask = np.asarray(mask, bool)
    labels, sizes = _objects(mask)
    out: dict[str, float] = {"foreground_fraction": float(mask.mean()),
                             "objects": int((sizes[1:] >= _MIN_OBJECT).sum()),
                             "specks": int((sizes[1:] < _MIN_OBJECT).sum())}
    if background is not None:
        n = _outside(labels, sizes, background)
        out["background_objects"] = n
        out["background_objects_per_mpx"] = n / (mask.size / 1e6)
    return out


def skeleton_stats(mask: NDArray[np.bool_], skeleton: NDArray[np.bool_] | None = None) -> dict[str, float]:
    """Skeleton of a foreground mask: how continuous its filaments are.

    ``skeleton``: the mask's skeleton when already computed (skimage ``skeletonize``).

    Returns
    -------
    dict
        ``fragments`` (8-connected skeleton pieces), ``skeleton_px``, ``branch_points``
        (skeleton pixels with 3 or more skeleton neighbours), ``branches`` (pieces left
        when branch points are removed) and ``mean_branch_px`` (skeleton length per
        branch, pixels).  Longer branches and fewer fragments mean unbroken filaments.
    """
    from scipy import ndimage as ndi
    from skimage.morphology import skeletonize

    sk = skeletonize(np.asarray(mask, bool)) if skeleton is None else np.asarray(skeleton, bool)
    n_sk = int(sk.sum())
    if n_sk == 0:
        return {"fragments": 0, "skeleton_px": 0, "branch_points": 0, "branches": 0, "mean_branch_px": 0.0}
    eight = np.ones((3, 3))
    neighbours = ndi.convolve(sk.astype(np.int32), eight.astype(np.int32), mode="constant") - sk
    junction = sk & (neighbours >= 3)
    _, fragments = ndi.label(sk, structure=eight)
    _, branches = ndi.label(sk & ~junction, structure=eight)
    return {"fragments": int(fragments), "skeleton_px": n_sk, "branch_points": int(junction.sum()),
            "branches": int(branches), "mean_branch_px": float(n_sk / max(branches, 1))}


def residual_checks(raw: NDArray[Any], denoised: NDArray[Any], window: int = 15) -> tuple[dict[str, float],
                                                                                          NDArray[np.float32]]:
    """Does ``raw - denoised`` look like noise?

    Parameters
    ----------
    raw, denoised : ndarray (H, W), input units
    window : int
        Side of the square window of the local correlation.

    Returns
    -------
    summary : dict
        ``mean``, ``std``, ``skewness`` of the residual; ``lag1`` (correlation of each
        residual pixel with its right-hand neighbour: about 0 for pixel-independent
        noise); ``structure_fraction``: share of pixels whose local correlation with
        the denoised image exceeds :data:`STRUCTURE_THRESHOLD` in magnitude.
    structure : ndarray (H, W), float32
        Local correlation (Pearson, ``window`` x ``window``) between the residual and the
        denoised image: near 0 where only noise was removed, high where the residual
        follows the image, i.e. where signal went into the residual.
    """
    from scipy import ndimage as ndi

    r = np.asarray(raw, dtype=np.float64) - np.asarray(denoised, dtype=np.float64)
    d = np.asarray(denoised, dtype=np.float64)
    std = float(r.std())
    skew = float(np.mean((r - r.mean()) ** 3) / std**3) if std > 0 else 0.0
    a, b = r[:, :-1].ravel(), r[:, 1:].ravel()
    lag1 = float(np.corrcoef(a, b)[0, 1]) if a.size > 1 and a.std() > 0 and b.std() > 0 else 0.0

    def mean(x: NDArray[Any]) -> NDArray[np.float64]:
        return ndi.uniform_filter(x, size=window, mode="reflect")

    mr, md = mean(r), mean(d)
    cov = mean(r * d) - mr * md
    vr = np.maximum(mean(r * r) - mr * mr, 0.0)
    vd = np.maximum(mean(d * d) - md * md, 0.0)
    den = np.sqrt(vr * vd)
    tiny = 1e-12 * max(float(vr.max()), float(vd.max()), 1e-300)
    structure = np.where(den > tiny, cov / np.where(den > tiny, den, 1.0), 0.0)
    summary = {"mean": float(r.mean()), "std": std, "skewness": skew, "lag1": lag1,
               "structure_fraction": float(np.mean(np.abs(structure) > STRUCTURE_THRESHOLD))}
    return summary, structure.astype(np.float32)
