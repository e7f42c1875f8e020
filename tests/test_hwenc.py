"""Hardware encoders (#29): --crf and --preset mapped to each family's own options, the one line
that says what a machine lacks, and the end-of-run hint when the encoder held a run back.

These machines have no NVENC, QSV, AMF, VAAPI or VideoToolbox: the real encoders PyAV carries are
opened and must fail, each for the runtime it cannot load (checked independently with ctypes, and
skipped where that runtime does load); a stand-in for the open plays a machine where one opens."""

from __future__ import annotations

import ctypes

import av
import pytest

from vsr import hwenc
from vsr.encode import EncodeError, EncodeOptions, check_encoder, encoder_options, unused_options


def private(name: str) -> set[str]:
    return {o.name for o in av.CodecContext.create(name, "w").supported_options.private}


def in_build(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except (av.codec.codec.UnknownCodecError, ValueError):
        return False


# Option names of the encoders PyAV's FFmpeg lacks, from FFmpeg's sources: vaapi_encode.h
# (VAAPI_ENCODE_COMMON_OPTIONS, VAAPI_ENCODE_RC_OPTIONS) with vaapi_encode_h265.c's own, and
# videotoolboxenc.c (COMMON_OPTIONS, hevc_options).
VAAPI_PRIVATE = {"low_power", "idr_interval", "b_depth", "async_depth", "max_frame_size", "rc_mode", "qp", "aud",
                 "tier", "sei", "profile", "level", "tiles", "tile_cols", "tile_rows"}
VT_PRIVATE = {"allow_sw", "require_sw", "realtime", "frames_before", "frames_after", "prio_speed",
              "power_efficient", "spatial_aq", "max_ref_frames", "profile", "alpha_quality", "constant_bit_rate"}
PRIVATE = {"vaapi": VAAPI_PRIVATE, "videotoolbox": VT_PRIVATE}


def private_of(name: str) -> set[str]:
    return PRIVATE.get(hwenc.family(name)) or private(name)


MAPPINGS = [
    ("h264_nvenc", 18, "medium", {"rc": "vbr", "cq": "18", "b": "0", "preset": "p4"}),
    ("hevc_nvenc", 0, "veryslow", {"rc": "constqp", "qp": "0", "preset": "p7"}),
    ("av1_nvenc", 18, "ultrafast", {"rc": "vbr", "cq": "22", "b": "0", "preset": "p1"}),
    ("h264_qsv", 23, "slow", {"global_quality": "23", "preset": "slow"}),
    ("av1_qsv", 0, "placebo", {"global_quality": "1", "preset": "veryslow"}),
    ("hevc_vaapi", 20, "fast", {"global_quality": "20", "b": "0", "compression_level": "5"}),
    ("av1_vaapi", 18, "medium", {"rc_mode": "CQP", "global_quality": "90", "b": "0", "compression_level": "4"}),
    ("h264_amf", 18, "medium", {"rc": "cqp", "qp_i": "15", "qp_p": "18", "qp_b": "20", "quality": "balanced"}),
    # hevc_amf has no qp_b (no B frames in FFmpeg's HEVC AMF): left out
    ("hevc_amf", 18, "veryfast", {"rc": "cqp", "qp_i": "15", "qp_p": "18", "quality": "speed"}),
    ("av1_amf", 18, "placebo", {"rc": "cqp", "qp_i": "75", "qp_p": "90", "qp_b": "100", "quality": "high_quality"}),
    ("h264_videotoolbox", 18, "superfast",
     {"flags": "+qscale", "global_quality": str(65 * 118), "realtime": "1", "prio_speed": "1"}),
    ("hevc_videotoolbox", 0, "slow", {"flags": "+qscale", "global_quality": str(100 * 118), "prio_speed": "0"}),
    ("hevc_videotoolbox", 51, "medium", {"flags": "+qscale", "global_quality": "118"}),
]


@pytest.mark.parametrize("name, crf, preset, expected", MAPPINGS)
def test_crf_and_preset_map_to_each_familys_own_options(name, crf, preset, expected):
    assert hwenc.quality_options(name, crf, preset, private_of(name)) == expected


def test_private_options_the_encoder_lacks_are_left_out_and_generic_ones_kept():
    assert hwenc.quality_options("h264_nvenc", 18, "medium", {"preset"}) == {"b": "0", "preset": "p4"}
    assert hwenc.quality_options("h264_amf", 18, "medium", set()) == {}
    assert hwenc.quality_options("h264_videotoolbox", 18, "slow", set()) == {"flags": "+qscale",
                                                                           "global_quality": str(65 * 118)}


def test_crf_or_preset_not_asked_gives_no_option_for_it_and_an_encoders_own_preset_passes():
    p = private("h264_nvenc")
    assert hwenc.quality_options("h264_nvenc", None, None, p) == {}
    assert hwenc.quality_options("h264_nvenc", None, "slower", p) == {"preset": "p6"}
    assert hwenc.quality_options("h264_nvenc", 30, None, p) == {"rc": "vbr", "cq": "30", "b": "0"}
    assert hwenc.quality_options("h264_nvenc", None, "p2", p) == {"preset": "p2"}
    assert hwenc.quality_options("libx264", 18, "medium", private("libx264")) == {}


@pytest.mark.parametrize("name", [n for n in ("h264_nvenc", "hevc_nvenc", "av1_nvenc", "h264_qsv", "hevc_qsv",
                                              "av1_qsv", "h264_amf", "hevc_amf", "av1_amf") if in_build(n)])
def test_every_mapped_value_is_one_the_real_encoder_takes(name):
    """Against the encoder's own option table in PyAV's FFmpeg: a named value is one of the option's
    choices, a number is inside its range, for every x264 preset and crf 0, 18, 51."""
    cc = av.CodecContext.create(name, "w")
    table = {o.name: o for o in (*cc.supported_options.private, *cc.supported_options.generic)}
    for preset in hwenc.X264_PRESETS:
        for crf in (0, 18, 51):
            for key, value in hwenc.quality_options(name, crf, preset, private(name)).items():
                option = table[key]
                choices = [c.name for c in option.choices or []]
                if value.lstrip("+") in choices or not value.lstrip("-").isdigit():
                    assert value.lstrip("+") in choices, (name, key, value, choices)
                else:
                    assert option.min <= int(value) <= option.max, (name, key, value, option.min, option.max)


@pytest.mark.parametrize("name, expected", [
    ("h264_nvenc", "nvenc"), ("hevc_qsv", "qsv"), ("av1_vaapi", "vaapi"), ("hevc_amf", "amf"),
    ("h264_videotoolbox", "videotoolbox"), ("libx264", None), ("mjpeg_qsv", None), ("vp9_qsv", None),
    ("prores_videotoolbox", None), ("h264", None), (None, None)])
def test_family(name, expected):
    assert hwenc.family(name) == expected


def loads(*libraries: str) -> bool:
    for library in libraries:
        try:
            ctypes.CDLL(library)
            return True
        except OSError:
            pass
    return False


# What each family's FFmpeg code loads first, and what it logs when that fails (nvenc: cuda_load_functions,
# qsvenc: the oneVPL dispatcher finds no runtime, amfenc: its DLL).
RUNTIME = {"nvenc": ("libcuda.so.1",), "qsv": ("libmfx-gen.so.1.2", "libmfxhw64.so.1"), "amf": ("libamfrt64.so.1",)}
SAID = {"nvenc": "Cannot load libcuda.so.1", "qsv": "Error creating a MFX session",
        "amf": "libamfrt64.so.1 failed to open"}


@pytest.mark.parametrize("name", [n for n in ("h264_nvenc", "hevc_nvenc", "av1_nvenc", "h264_qsv", "hevc_qsv",
                                              "av1_qsv", "h264_amf", "hevc_amf", "av1_amf") if in_build(n)])
def test_a_hardware_encoder_that_cannot_open_says_what_is_missing_in_one_line(name):
    fam = hwenc.family(name)
    if loads(*RUNTIME[fam]):
        pytest.skip(f"{RUNTIME[fam][0]} loads here: the hardware may be there")
    level = av.logging.get_level()
    message = hwenc.hardware_problem(name)
    assert message == f"{name} needs {hwenc.NEEDS[fam]}; FFmpeg says: {message.split('FFmpeg says: ')[1]}"
    assert SAID[fam] in message and "\n" not in message
    assert av.logging.get_level() == level  # the log level listened at is given back


@pytest.mark.parametrize("name", ["h264_vaapi", "hevc_videotoolbox"])
def test_an_encoder_this_ffmpeg_lacks_says_so(name):
    if in_build(name):
        pytest.skip(f"this FFmpeg has {name}")
    assert hwenc.hardware_problem(name) == (f"{name} needs {hwenc.NEEDS[hwenc.family(name)]}, and this FFmpeg "
                                            f"({av.ffmpeg_version_info}, in PyAV {av.__version__}) is built without it")


def test_vaapi_is_refused_even_where_ffmpeg_has_it(monkeypatch):
    """VAAPI takes frames on a VA surface only, which vsr does not upload: no open is tried."""
    monkeypatch.setattr(av.codec, "Codec", lambda name, mode: object())
    monkeypatch.setattr(hwenc, "_trial_open", lambda *a: pytest.fail("VAAPI must not be opened"))
    assert hwenc.hardware_problem("hevc_vaapi") == (
        "hevc_vaapi needs a VAAPI device (/dev/dri) with the frames uploaded to it: vsr gives encoders frames in "
        "memory, not on a VA surface (use hevc_qsv on Intel, hevc_amf on AMD, or a software encoder)")


def test_an_encoder_that_opens_has_no_problem(monkeypatch):
    """A stand-in for a machine with NVENC: the open succeeds, so nothing is missing."""
    opened = []
    monkeypatch.setattr(hwenc, "_open", lambda cc: opened.append((cc.name, cc.width, cc.height, cc.pix_fmt)))
    assert hwenc.hardware_problem("h264_nvenc") is None
    assert opened == [("h264_nvenc", 256, 256, "yuv420p")]
    assert hwenc.hardware_problem("libx264") is None and len(opened) == 1  # not a hardware encoder: not opened


def test_check_encoder_refuses_missing_hardware_up_front_in_one_line():
    if not in_build("h264_nvenc"):
        pytest.skip("this FFmpeg has no h264_nvenc")
    if loads(*RUNTIME["nvenc"]):
        pytest.skip("libcuda loads here: NVENC may be there")
    with pytest.raises(EncodeError) as caught:
        check_encoder(EncodeOptions(codec="h264_nvenc"))
    message = str(caught.value)
    assert message.startswith("h264_nvenc needs an NVIDIA GPU with NVENC") and "Cannot load libcuda.so.1" in message
    assert "\n" not in message


def test_encode_gives_a_hardware_encoder_its_mapped_options_and_no_unused_warning():
    if not in_build("h264_nvenc"):
        pytest.skip("this FFmpeg has no h264_nvenc")
    nvenc = av.codec.Codec("h264_nvenc", "w")
    assert encoder_options(nvenc, EncodeOptions()) == {"rc": "vbr", "cq": "18", "b": "0", "preset": "p4"}
    assert encoder_options(nvenc, EncodeOptions(crf=25, preset="slow", extra=(("gpu", "1"),))) == {
        "rc": "vbr", "cq": "25", "b": "0", "preset": "p5", "gpu": "1"}
    assert unused_options(nvenc, EncodeOptions(crf=30, preset="slow"), EncodeOptions()) == []
    # a software encoder without presets is still told about it
    assert unused_options(av.codec.Codec("libvpx-vp9", "w"), EncodeOptions(preset="slow"), EncodeOptions()) == [
        "--preset does nothing with the libvpx-vp9 encoder (it has no presets)"]


def never(name: str) -> bool:
    return False


def test_speed_hint_names_more_encoders_when_the_cores_allow():
    assert hwenc.speed_hint(0.95, 0.2, 1, 16, "cuda", "libx264", never) == (
        "the encoder set the pace (busy 95% of the run, the model 20%); faster here: --encoders 4")
    assert hwenc.speed_hint(0.95, 0.2, 4, 16, "cuda", "libx264", never) == (
        "the encoder set the pace (busy 95% of the run, the model 20%); faster here: a faster --preset")
    assert hwenc.speed_hint(0.9, 0.1, 1, 64, "cpu", "libx265", never).endswith("faster here: --encoders 8")


def test_speed_hint_names_a_hardware_encoder_of_the_same_codec_that_opens():
    asked = []

    def available(name):
        asked.append(name)
        return name in ("hevc_nvenc", "hevc_qsv")

    assert hwenc.speed_hint(0.9, 0.3, 1, 2, "cuda", "libx265", available) == (
        "the encoder set the pace (busy 90% of the run, the model 30%); faster here: --codec hevc_nvenc")
    assert asked == ["hevc_nvenc"]  # the model's device's family first; the first that opens is named
    asked.clear()
    assert hwenc.speed_hint(0.9, 0.3, 1, 8, "xpu", "libx265", available).endswith(
        "faster here: --codec hevc_qsv or --encoders 2")
    assert asked == ["hevc_qsv"]
    asked.clear()
    assert hwenc.speed_hint(0.9, 0.3, 1, 2, "cpu", "libsvtav1", available).endswith("a faster --preset")
    assert asked == [f"av1_{f}" for f in hwenc.FAMILIES]  # AV1 ones only, none opens
    asked.clear()
    assert hwenc.speed_hint(0.9, 0.3, 1, 16, "cuda", "h264_nvenc", available).endswith("faster here: a faster --preset")
    assert asked == []  # already a hardware encoder: neither another one nor more cores


@pytest.mark.parametrize("encode, model", [(0.5, 0.95), (0.95, 0.7), (0.79, 0.1)])
def test_speed_hint_is_silent_when_the_encoder_did_not_hold_the_run_back(encode, model):
    assert hwenc.speed_hint(encode, model, 1, 16, "cuda", "libx264", lambda n: True) is None
