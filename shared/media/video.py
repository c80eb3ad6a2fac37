"""Video files: MP4 encoding with a tier's quality settings, posters, decoding, and probing what a
file really holds (delivery trusts nothing a file merely claims)."""

import functools
import io
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from shared.domain.tiers import quality_settings_problems
from shared.errors import InvalidInput, TierflowError

CODECS = {"h264": "libx264", "h265": "libx265"}
DEFAULT_CRF = 18
DEFAULT_PIXEL_FORMAT = "yuv420p"


def _check_frames(frames: np.ndarray) -> tuple[int, int, int]:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        got = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise InvalidInput(f"frames must be a uint8 array shaped (frames, height, width, 3), not {got}")
    count, height, width, _ = frames.shape
    if count < 1 or height < 1 or width < 1:
        raise InvalidInput(f"there are no pixels to write (frames shaped {frames.shape})")
    return count, height, width


@functools.cache
def _ffmpeg_encoders() -> frozenset[str]:
    """Encoders the ffmpeg bundled with imageio-ffmpeg was built with."""
    import imageio_ffmpeg

    listing = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-encoders"],
                             capture_output=True, text=True, check=True).stdout
    # Lines look like " V....D libx264   libx264 H.264 / AVC / ..."; V marks a video encoder.
    rows = [line.split() for line in listing.splitlines() if line.startswith(" V")]
    return frozenset(row[1] for row in rows if len(row) > 1)


def encode_mp4(frames: np.ndarray, fps: int, quality_settings: dict | None = None) -> bytes:
    """H.264 (or H.265) MP4 of `frames` at exactly their size, with a tier's quality settings.

    Settings: `codec` h264 (default) or h265, `crf` (default 18), `pixel_format` (default yuv420p),
    `preset` (the encoder's default, medium, unless given) and `fps`, which overrides the recipe's.
    """
    import imageio_ffmpeg

    # 1. settings
    _, height, width = _check_frames(frames)
    problems = quality_settings_problems(quality_settings)
    if isinstance(fps, bool) or not isinstance(fps, int) or fps < 1:
        problems.append(f"fps {fps!r} must be a whole number of at least 1")
    if problems:
        raise InvalidInput("cannot encode: " + "; ".join(problems))
    settings = quality_settings or {}
    codec = settings.get("codec", "h264")
    encoder = CODECS[codec]
    if encoder not in _ffmpeg_encoders():
        raise TierflowError(
            f"codec {codec} needs the {encoder} encoder, which the ffmpeg bundled with imageio-ffmpeg "
            f"({imageio_ffmpeg.get_ffmpeg_exe()}) lacks; use codec h264 or install a build that has it"
        )
    pixel_format = settings.get("pixel_format", DEFAULT_PIXEL_FORMAT)
    if pixel_format == "yuv420p" and (width % 2 or height % 2):
        raise InvalidInput(f"{width}x{height} cannot be stored as yuv420p: both sides must be even")
    crf = settings.get("crf", DEFAULT_CRF)
    fps = settings.get("fps", fps)
    output_params = ["-crf", str(crf), "-movflags", "+faststart"]  # faststart: playable while downloading
    if "preset" in settings:
        output_params += ["-preset", settings["preset"]]
    if encoder == "libx265":
        # hvc1 is the tag Apple players need; x265 otherwise prints its banner on every run.
        output_params += ["-tag:v", "hvc1", "-x265-params", "log-level=error"]

    # 2. encode; macro_block_size=1 keeps 1080 rows (the default 16 pads to 1088)
    with tempfile.TemporaryDirectory(prefix="tierflow-encode-") as scratch:
        path = Path(scratch) / "segment.mp4"
        writer = imageio_ffmpeg.write_frames(
            str(path), (width, height), fps=fps, codec=encoder, pix_fmt_in="rgb24", pix_fmt_out=pixel_format,
            quality=None, macro_block_size=1, ffmpeg_log_level="error", output_params=output_params,
        )
        writer.send(None)  # start ffmpeg
        try:
            for frame in frames:
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()
        return path.read_bytes()


def poster_png(frames: np.ndarray) -> bytes:
    """The first frame as a PNG, for thumbnails and review."""
    from PIL import Image

    _check_frames(frames)
    buffer = io.BytesIO()
    # The lowest zlib effort: a third of the default's time, and a thumbnail barely larger.
    Image.fromarray(frames[0]).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_video(data: bytes) -> np.ndarray:
    """Every frame of a video as uint8 (frames, height, width, 3)."""
    import imageio_ffmpeg

    with tempfile.TemporaryDirectory(prefix="tierflow-decode-") as scratch:
        path = Path(scratch) / "video"
        path.write_bytes(data)
        try:
            reader = imageio_ffmpeg.read_frames(str(path))
            width, height = next(reader)["size"]
            frames = [np.frombuffer(chunk, dtype=np.uint8).reshape(height, width, 3) for chunk in reader]
        except (OSError, RuntimeError, StopIteration, ValueError) as exc:
            raise InvalidInput(f"not a readable video ({len(data)} bytes): {exc}") from exc
    return np.stack(frames) if frames else np.zeros((0, height, width, 3), dtype=np.uint8)


def probe_video(data: bytes) -> tuple[int, int, int]:
    """(width, height, frame count) of a video, found by decoding every frame.

    Used by delivery checks, so it trusts nothing the file merely claims about its length.
    """
    frames = decode_video(data)
    return frames.shape[2], frames.shape[1], frames.shape[0]
