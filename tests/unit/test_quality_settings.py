"""Quality settings for masters (ProRes, DNxHR in .mov, start timecode): each refused combination
with its exact sentence, and each codec and profile encoded by the bundled ffmpeg and probed back."""

import numpy as np
import pytest

from shared.domain import tiers
from shared.errors import InvalidInput
from shared.media import video

PRORES = "proxy, lt, standard, hq, 4444"
DNXHR = "lb, sq, hq, hqx, 444"


@pytest.mark.parametrize(("settings", "problem"), [
    ({"codec": "prores", "profile": "ultra"},
     f"quality setting 'profile' is \"ultra\" but must be one of {PRORES} for codec prores"),
    ({"codec": "dnxhr", "profile": "4444"},
     f"quality setting 'profile' is \"4444\" but must be one of {DNXHR} for codec dnxhr (4444 is a prores profile)"),
    ({"codec": "prores", "profile": "hqx"},
     f"quality setting 'profile' is \"hqx\" but must be one of {PRORES} for codec prores (hqx is a dnxhr profile)"),
    ({"profile": "hq"},  # no codec: h264, which has none
     f"quality setting 'profile' is \"hq\" but codec h264 has no profiles: profiles are for prores ({PRORES}) and "
     f"dnxhr ({DNXHR})"),
    ({"codec": "h265", "profile": "hq"},
     f"quality setting 'profile' is \"hq\" but codec h265 has no profiles: profiles are for prores ({PRORES}) and "
     f"dnxhr ({DNXHR})"),
    ({"codec": "prores", "profile": 3}, "quality setting 'profile' is 3 but must be a profile name such as \"hq\""),
    ({"codec": "prores", "crf": 18},
     "quality setting 'crf' applies to h264 and h265 only; a prores master's quality and pixel format follow its "
     "profile"),
    ({"codec": "dnxhr", "pixel_format": "yuv444p"},
     "quality setting 'pixel_format' applies to h264 and h265 only; a dnxhr master's quality and pixel format follow "
     "its profile"),
    ({"codec": "h264", "fps": 24, "timecode": "01:00:00:00"},
     "quality setting 'timecode' is for the .mov masters (codec prores or dnxhr), not h264"),
    ({"codec": "prores", "timecode": "01:00:00:00"},
     "quality setting 'timecode' needs 'fps' as well: a timecode counts frames at a fixed rate"),
    ({"codec": "prores", "fps": 24, "timecode": "01:00:00:24"},
     "quality setting 'timecode' is \"01:00:00:24\" but its frames field (24) must be below the frame rate (24 fps)"),
    ({"codec": "prores", "fps": 24, "timecode": "24:00:00:00"},
     "quality setting 'timecode' is \"24:00:00:00\" but must be HH:MM:SS:FF (non-drop-frame), e.g. \"01:00:00:00\""),
    ({"codec": "prores", "fps": 30, "timecode": "01:00:00;00"},
     "quality setting 'timecode' is \"01:00:00;00\" but must be HH:MM:SS:FF (non-drop-frame), e.g. \"01:00:00:00\""),
    ({"codec": "avid"}, "quality setting 'codec' is \"avid\" but must be one of h264, h265, prores, dnxhr"),
])
def test_each_bad_combination_is_refused_with_its_sentence(settings, problem):
    assert tiers.quality_settings_problems(settings) == [problem]
    # The encoder refuses the same, before ffmpeg runs.
    with pytest.raises(InvalidInput) as refused:
        video.encode_video(np.zeros((1, 144, 256, 3), dtype=np.uint8), 8, settings)
    assert str(refused.value) == "cannot encode: " + problem


@pytest.mark.parametrize("settings", [
    {"codec": "prores"}, {"codec": "prores", "profile": "4444", "fps": 24, "timecode": "23:59:59:23"},
    {"codec": "dnxhr", "profile": "lb"}, {"codec": "dnxhr", "profile": "444", "fps": 120, "timecode": "00:00:00:119"},
    {"codec": "h265", "crf": 20, "pixel_format": "yuv444p", "preset": "fast", "fps": 30}, None, {},
])
def test_good_settings_pass(settings):
    assert tiers.quality_settings_problems(settings) == []


@pytest.mark.parametrize(("codec", "width", "height", "problem"), [
    ("dnxhr", 248, 120, "codec dnxhr needs frames of at least 256×120, and the tier's box is 248×120: make it larger "
                        "or use codec prores"),
    ("dnxhr", 256, 112, "codec dnxhr needs frames of at least 256×120, and the tier's box is 256×112: make it larger "
                        "or use codec prores"),
    ("dnxhr", 8184, 8192, "codec dnxhr cannot encode frames with both sides over 8176, and the tier's box is "
                          "8184×8192: make it smaller or use codec prores"),
    ("dnxhr", 256, 120, None), ("dnxhr", 8192, 8176, None), ("prores", 64, 64, None), ("prores", 8192, 8192, None),
    ("h264", 64, 64, None),
])
def test_dnxhr_sizes_are_checked_against_what_its_encoder_takes(codec, width, height, problem):
    assert tiers.output_size_problem({"codec": codec}, width, height, "the tier's box") == problem


def test_dnxhr_frames_under_its_minimum_are_refused_before_ffmpeg_runs():
    with pytest.raises(InvalidInput) as refused:
        video.encode_video(np.zeros((1, 256, 144, 3), dtype=np.uint8), 8, {"codec": "dnxhr", "profile": "sq"})
    assert str(refused.value) == ("cannot encode: codec dnxhr needs frames of at least 256×120, and the frame size is "
                                  "144×256: make it larger or use codec prores")


def test_output_format_names_file_type_and_label_with_every_default_applied():
    assert tiers.output_format(None) == tiers.OutputFormat("h264", None, None)
    assert tiers.output_format({"codec": "prores"}) == tiers.OutputFormat("prores", "hq", "00:00:00:00")
    mp4, mov = tiers.output_format({"codec": "h265"}), tiers.output_format({"codec": "dnxhr", "profile": "hqx"})
    assert (mp4.extension, mp4.content_type, mp4.label) == ("mp4", "video/mp4", "H.265")
    assert (mov.extension, mov.content_type, mov.label) == ("mov", "video/quicktime", "DNxHR HQX")
    assert [tiers.output_format({"codec": "prores", "profile": p}).label for p in tiers.MASTER_PROFILES["prores"]] == [
        "ProRes 422 Proxy", "ProRes 422 LT", "ProRes 422", "ProRes 422 HQ", "ProRes 4444"]


def _frames(count: int, width: int, height: int) -> np.ndarray:
    # A moving gradient: compresses like footage, not like noise or a flat field.
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([np.dstack([(x + 9 * i) % 256, (y + 5 * i) % 256, (x + y) // 2 % 256]).astype(np.uint8)
                     for i in range(count)])


MASTERS = [(codec, profile) for codec, profiles in tiers.MASTER_PROFILES.items() for profile in profiles]


@pytest.mark.parametrize(("codec", "profile"), MASTERS)
def test_each_master_probes_as_its_codec_profile_and_timecode(codec, profile):
    settings = {"codec": codec, "profile": profile, "fps": 8, "timecode": "01:02:03:07"}
    data = video.encode_video(_frames(3, 256, 144), 24, settings)
    assert data[4:12] == b"ftypqt  "  # QuickTime, not MP4
    probe = video.probe_video(data)
    assert probe == (256, 144, 3)
    assert (probe.codec, probe.profile, probe.timecode) == (codec, profile, "01:02:03:07")


def test_a_master_without_a_timecode_starts_at_zero_and_mp4s_stay_as_they_were():
    prores = video.probe_video(video.encode_video(_frames(2, 256, 144), 8, {"codec": "prores"}))
    assert (prores.codec, prores.profile, prores.timecode) == ("prores", "hq", "00:00:00:00")
    h264 = video.probe_video(video.encode_video(_frames(2, 256, 144), 8))
    assert (h264, h264.codec, h264.profile, h264.timecode) == ((256, 144, 2), "h264", "high", None)
    mp4 = video.encode_mp4(_frames(2, 256, 144), 8, {"codec": "h265"})
    assert mp4[4:8] == b"ftyp" and mp4[8:12] != b"qt  " and video.probe_video(mp4).codec == "h265"
    with pytest.raises(InvalidInput, match="codec prores makes a .mov master, not an MP4: use encode_video"):
        video.encode_mp4(_frames(1, 256, 144), 8, {"codec": "prores"})
