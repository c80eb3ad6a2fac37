"""Video files: encoding with a tier's quality settings (H.264 / H.265 in MP4, ProRes / DNxHR
masters in QuickTime .mov with a start timecode), posters, decoding, and probing what a file really
holds (delivery trusts nothing a file merely claims)."""

import functools
import io
import re
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from shared.domain.tiers import (
    normal_timecode,
    output_format,
    output_size_problem,
    quality_settings_problems,
    timecode_problem,
)
from shared.errors import InvalidInput, TierflowError

CODECS = {"h264": "libx264", "h265": "libx265", "prores": "prores_ks", "dnxhr": "dnxhd"}
DEFAULT_CRF = 18
DEFAULT_PIXEL_FORMAT = "yuv420p"
# A master's profile as its encoder takes it (prores_ks -profile:v 0..4, dnxhd -profile:v dnxhr_*)
# and the pixel format it is stored in: 10 bit, 4:4:4 for ProRes 4444 and DNxHR 444, else 4:2:2
# (DNxHR LB, SQ and HQ are 8 bit).
MASTER_ENCODING = {
    ("prores", "proxy"): ("0", "yuv422p10le"), ("prores", "lt"): ("1", "yuv422p10le"),
    ("prores", "standard"): ("2", "yuv422p10le"), ("prores", "hq"): ("3", "yuv422p10le"),
    ("prores", "4444"): ("4", "yuv444p10le"),
    ("dnxhr", "lb"): ("dnxhr_lb", "yuv422p"), ("dnxhr", "sq"): ("dnxhr_sq", "yuv422p"),
    ("dnxhr", "hq"): ("dnxhr_hq", "yuv422p"), ("dnxhr", "hqx"): ("dnxhr_hqx", "yuv422p10le"),
    ("dnxhr", "444"): ("dnxhr_444", "yuv444p10le"),
}
# How ffmpeg describes a stream ("Video: prores (HQ) (apch / …)", "Video: dnxhd (DNXHR HQX) (AVdh /
# …)", "Video: h264 (High) (avc1 / …)"): its codec names as quality settings name them, and the
# profile, lowercased, is the quality settings' name too ("hq", "dnxhr hqx" less its "dnxhr ").
_FFMPEG_CODECS = {"hevc": "h265"}
_VIDEO_STREAM = re.compile(r"^\s*Stream #\d+:\d+\S*: Video: (\w+)((?: \([^()]*\))*)", re.MULTILINE)
_TIMECODE = re.compile(r"^\s*timecode\s*: (\d+:\d+:\d+[:;]\d+)\s*$", re.MULTILINE)


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


def encode_video(frames: np.ndarray, fps: int, quality_settings: dict | None = None) -> bytes:
    """`frames` at exactly their size, encoded as a tier's quality settings say: H.264 (default) or
    H.265 in MP4, or a ProRes or DNxHR master in QuickTime .mov (`shared.domain.tiers.output_format`
    says which, and the file's extension and content type).

    MP4 settings: `crf` (default 18), `pixel_format` (default yuv420p), `preset` (the encoder's
    default, medium, unless given). Masters: `profile` (default hq), which sets the pixel format
    too, and `timecode`, the start timecode (default 00:00:00:00). `fps` overrides the recipe's.
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
    target = output_format(settings)
    fps = settings.get("fps", fps)
    problems = [output_size_problem(settings, width, height),
                timecode_problem(target.timecode, fps) if target.timecode else None]
    if any(problems):
        raise InvalidInput("cannot encode: " + "; ".join(p for p in problems if p))
    encoder = CODECS[target.codec]
    if encoder not in _ffmpeg_encoders():
        raise TierflowError(
            f"codec {target.codec} needs the {encoder} encoder, which the ffmpeg bundled with imageio-ffmpeg "
            f"({imageio_ffmpeg.get_ffmpeg_exe()}) lacks; use codec h264 or install a build that has it"
        )
    if target.is_master:
        profile, pixel_format = MASTER_ENCODING[(target.codec, target.profile)]
        # faststart: the index first, so a player can start before the whole file is there.
        output_params = ["-profile:v", profile, "-timecode", target.timecode, "-movflags", "+faststart"]
    else:
        pixel_format = settings.get("pixel_format", DEFAULT_PIXEL_FORMAT)
        if pixel_format == "yuv420p" and (width % 2 or height % 2):
            raise InvalidInput(f"{width}x{height} cannot be stored as yuv420p: both sides must be even")
        crf = settings.get("crf", DEFAULT_CRF)
        output_params = ["-crf", str(crf), "-movflags", "+faststart"]  # faststart: playable while downloading
        if "preset" in settings:
            output_params += ["-preset", settings["preset"]]
        if encoder == "libx265":
            # hvc1 is the tag Apple players need; x265 otherwise prints its banner on every run.
            output_params += ["-tag:v", "hvc1", "-x265-params", "log-level=error"]

    # 2. encode; macro_block_size=1 keeps 1080 rows (the default 16 pads to 1088)
    with tempfile.TemporaryDirectory(prefix="tierflow-encode-") as scratch:
        path = Path(scratch) / f"segment.{target.extension}"
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


def encode_mp4(frames: np.ndarray, fps: int, quality_settings: dict | None = None) -> bytes:
    """`encode_video` for settings whose codec goes in MP4 (h264, h265); a master codec is refused."""
    target = output_format(quality_settings if isinstance(quality_settings, dict) else None)
    if target.is_master:
        raise InvalidInput(f"codec {target.codec} makes a .mov master, not an MP4: use encode_video")
    return encode_video(frames, fps, quality_settings)


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


class _Size(NamedTuple):
    width: int
    height: int
    frames: int


class VideoProbe(_Size):
    """What a video file holds, as found by reading it: (width, height, frames), decoded frame by
    frame, which it unpacks and compares as (probe_video's callers always had that triple), and as
    attributes the codec, profile and start timecode of its first video stream (in the names
    quality settings use: "prores" "hq", "dnxhr" "hqx", "h264" "high"; None where the file says none).
    """

    codec: str | None
    profile: str | None
    timecode: str | None

    def __new__(cls, width: int, height: int, frames: int, codec: str | None = None, profile: str | None = None,
                timecode: str | None = None):
        probe = super().__new__(cls, width, height, frames)
        probe.codec, probe.profile, probe.timecode = codec, profile, timecode
        return probe

    def __repr__(self) -> str:
        return (f"VideoProbe(width={self.width}, height={self.height}, frames={self.frames}, codec={self.codec!r}, "
                f"profile={self.profile!r}, timecode={self.timecode!r})")


def probe_video(data: bytes) -> VideoProbe:
    """Width, height and frame count of a video, found by decoding every frame, with its stream's
    codec, profile and timecode (see VideoProbe).

    Used by delivery checks, so it trusts nothing the file merely claims about its length.
    """
    frames = decode_video(data)
    codec, profile, timecode = _stream_format(data)
    return VideoProbe(frames.shape[2], frames.shape[1], frames.shape[0], codec, profile, timecode)


def _stream_format(data: bytes) -> tuple[str | None, str | None, str | None]:
    """(codec, profile, timecode) of the first video stream, from ffmpeg's description of the input."""
    import imageio_ffmpeg

    with tempfile.TemporaryDirectory(prefix="tierflow-probe-") as scratch:
        path = Path(scratch) / "video"
        path.write_bytes(data)
        # With no output ffmpeg describes the input on stderr and exits 1: that is the answer.
        described = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                                   capture_output=True, text=True, errors="replace", timeout=60).stderr
    stream = _VIDEO_STREAM.search(described)
    if stream is None:
        return None, None, None
    codec = _FFMPEG_CODECS.get(stream.group(1), stream.group(1))
    # The first parenthesis is the profile, unless it is the codec tag ("avc1 / 0x31637661").
    groups = re.findall(r"\(([^()]*)\)", stream.group(2))
    profile = groups[0].lower() if groups and " / " not in groups[0] else None
    if codec == "dnxhd" and profile and profile.startswith("dnxhr "):  # DNxHD's resolution-free successor
        codec, profile = "dnxhr", profile.removeprefix("dnxhr ")
    timecode = _TIMECODE.search(described)
    return codec, profile, normal_timecode(timecode.group(1)) if timecode else None
