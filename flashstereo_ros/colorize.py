"""Disparity to a turbo-coloured BGR image, for PNGs and RViz's Image display."""
from __future__ import annotations

import cv2
import numpy as np

LEGEND_WIDTH = 64
AUTO_PERCENTILES = (1.0, 99.0)


def disparity_range(disparity: np.ndarray, valid: np.ndarray | None = None) -> tuple[float, float]:
    """Robust automatic range: the 1st..99th percentile of finite (and valid) disparities."""
    values = disparity[np.isfinite(disparity) if valid is None else (valid & np.isfinite(disparity))]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, AUTO_PERCENTILES)
    return float(low), float(max(high, low + 1e-3))


def colorize(disparity: np.ndarray, value_range: tuple[float, float] | None = None,
             invalid: np.ndarray | None = None) -> np.ndarray:
    """(H,W) float disparity -> (H,W,3) uint8 BGR, turbo; invalid or non-finite pixels are black."""
    low, high = value_range if value_range is not None else disparity_range(disparity)
    scaled = (np.nan_to_num(disparity, nan=low, posinf=high, neginf=low) - low) * (255.0 / max(high - low, 1e-6))
    image = cv2.applyColorMap(np.clip(scaled, 0, 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    bad = ~np.isfinite(disparity)
    if invalid is not None:
        bad |= invalid
    image[bad] = 0
    return image


def with_legend(image: np.ndarray, value_range: tuple[float, float], unit: str = "px") -> np.ndarray:
    """Append a vertical colour bar labelled with the range's ends (max at the top)."""
    h = image.shape[0]
    ramp = np.linspace(255, 0, h).astype(np.uint8)[:, None].repeat(LEGEND_WIDTH // 3, axis=1)
    bar = np.zeros((h, LEGEND_WIDTH, 3), np.uint8)
    bar[:, : ramp.shape[1]] = cv2.applyColorMap(ramp, cv2.COLORMAP_TURBO)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.3, min(0.5, h / 900))
    x = ramp.shape[1] + 2
    cv2.putText(bar, f"{value_range[1]:.0f}", (x, 14), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(bar, f"{value_range[0]:.0f}", (x, h - 6), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(bar, unit, (x, h // 2), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([image, bar], axis=1)
