"""Degenerate numbers: what an untrained, dead or diverged model gives, found before it reaches a native library.

A layer whose features are constant over the image set (a zero-initialized head, a dead layer) or that holds NaN
or infinity (a diverged checkpoint) has no embedding, no neighbours and no colour scale. scikit-learn's PCA and
t-SNE divide by the variance and can crash the process on such input (a segmentation fault, not an exception), so
every caller that reduces, embeds, normalizes or divides asks `degenerate_reason` first and says the reason on the
affected figure instead.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

__all__ = ["DegenerateError", "degenerate_reason", "require_usable"]

# Features whose largest spread over the images is below this fraction of their largest magnitude are constant up
# to float rounding (a float32 sum of the same numbers in another order differs by about 1e-7 relative).
CONSTANT_RTOL = 1e-6


class DegenerateError(ValueError):
    """The features cannot be embedded, compared or normalized; the message says why, in words for a caption."""


def degenerate_reason(features: Any, what: str = "the features", over: str = "images",
                      constant_ok: bool = False) -> Optional[str]:
    """Why ``features`` (N, ...) cannot be embedded or normalized, or None when they can.

    "contain NaN or infinite values" when any value is not finite; "are constant over the N images" when every
    row equals the first up to `CONSTANT_RTOL` of the largest magnitude (all zeros included); else None. One row
    is never called constant (nothing to compare); ``constant_ok`` skips that check (for callers that handle zero
    variance themselves). ``what`` and ``over`` word the sentence.
    """
    if hasattr(features, "detach"):  # a torch tensor, without importing torch
        features = features.detach().float().cpu().numpy()
    x = np.asarray(features)
    x = x.reshape(x.shape[0], -1) if x.ndim else x.reshape(1, 1)
    if x.size == 0:
        return f"{what} are empty"
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        return f"{what} contain NaN or infinite values (in {bad} of {x.shape[0]} {over})"
    if x.shape[0] > 1 and not constant_ok:
        scale = float(np.abs(x).max())
        spread = float((x.max(axis=0) - x.min(axis=0)).max())
        if spread <= CONSTANT_RTOL * scale or scale == 0.0:
            value = "all zero" if scale == 0.0 else "the same for every one"
            return f"{what} are constant over the {x.shape[0]} {over} ({value})"
    return None


def require_usable(features: Any, what: str = "the features", over: str = "images",
                   constant_ok: bool = False) -> None:
    """Raise `DegenerateError` with `degenerate_reason` when there is one."""
    reason = degenerate_reason(features, what, over, constant_ok)
    if reason is not None:
        raise DegenerateError(reason)
