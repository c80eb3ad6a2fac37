"""How alike an upscaled segment is to its source: SSIM and PSNR between the source's frames and
the target's frames downscaled to the source size (mean over frames), and a side-by-side image.

The same seed at a new size can change the composition; a studio must see that before it pays
for delivery, so a segment below the threshold (TIERFLOW_SIMILARITY_THRESHOLD, on SSIM) is flagged.
"""

import io

import numpy as np
from PIL import Image

PSNR_CAP_DB = 100.0  # identical frames have infinite PSNR; a finite cap keeps it a number
WINDOW = 7  # SSIM's sliding window (uniform, 7x7)
C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def downscale(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Frames resized to width x height by area averaging (the fair way to compare sizes)."""
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BOX)) for f in frames])


def _box_mean(image: np.ndarray) -> np.ndarray:
    # Mean over every WINDOW x WINDOW window ("valid" positions), from a summed-area table.
    table = np.pad(image, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    w = WINDOW
    return (table[w:, w:] - table[:-w, w:] - table[w:, :-w] + table[:-w, :-w]) / (w * w)


def _luma(frame: np.ndarray) -> np.ndarray:
    return frame.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two RGB frames of one size, on luminance (1.0 = identical)."""
    x, y = _luma(a), _luma(b)
    mx, my = _box_mean(x), _box_mean(y)
    vx = _box_mean(x * x) - mx * mx
    vy = _box_mean(y * y) - my * my
    cxy = _box_mean(x * y) - mx * my
    index = ((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx * mx + my * my + C1) * (vx + vy + C2))
    return float(index.mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over RGB, capped at PSNR_CAP_DB."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10 * np.log10(255**2 / mse))


def compare(source: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """(SSIM, PSNR) of target vs source, the target downscaled to the source size, mean over frames."""
    count = min(len(source), len(target))
    height, width = source.shape[1:3]
    small = downscale(target[:count], width, height)
    pairs = list(zip(source[:count], small))
    return (float(np.mean([ssim(s, t) for s, t in pairs])), float(np.mean([psnr(s, t) for s, t in pairs])))


def side_by_side_png(source: np.ndarray, target: np.ndarray) -> bytes:
    """The middle frame: source | target (downscaled to the source size), as one PNG."""
    index = min(len(source), len(target)) // 2
    height, width = source.shape[1:3]
    pair = np.concatenate([source[index], downscale(target[index:index + 1], width, height)[0]], axis=1)
    buffer = io.BytesIO()
    Image.fromarray(pair).save(buffer, format="PNG")
    return buffer.getvalue()
