"""Hardware encoders: NVIDIA NVENC, Intel Quick Sync (QSV), VAAPI, AMD AMF and Apple VideoToolbox,
for H.264, HEVC and AV1 (``h264_nvenc``, ``hevc_qsv``, ``av1_amf``...).

vsr's ``--crf`` (x264's 0-51 scale) and ``--preset`` (x264's names, ultrafast..placebo) become each
family's own constant-quality and speed options (:func:`quality_options`), so one command line means
about the same quality and speed whichever encoder writes it.  :func:`hardware_problem` opens the
encoder once on a small picture and says, in one line, what is missing when it cannot;
:func:`speed_hint` says, after a run the encoder held back, what would go faster on this machine.

Options are given to the encoder as one dict (``add_stream(options=...)``, ``CodecContext.options``),
read by ``avcodec_open2``: that dict takes the encoder's own (private) options and libavcodec's
generic ones alike.  The generic ones used here (:data:`GENERIC`: ``b``, ``global_quality``,
``flags``, ``compression_level``) exist on every encoder, so they are always given; a private
option is given only where the encoder has it (``private``, its own option names), since FFmpeg
builds and versions differ in which they have.

Other codecs of these families (``mjpeg_qsv``, ``vp9_qsv``, ``prores_videotoolbox``...) have other
quality scales and are left to the generic path (:func:`family` is None for them).  No torch.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable

import av

FAMILIES = ("nvenc", "qsv", "amf", "videotoolbox", "vaapi")
CODECS = ("h264", "hevc", "av1")  # the codecs whose quality vsr maps (x264's crf scale is H.264's QP)
GENERIC = frozenset({"b", "global_quality", "flags", "compression_level"})  # libavcodec options_table.h

# x264's presets, fastest first (x264 common/base.h, x264_preset_names).
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")

# NVENC: presets p1 (fastest) .. p7 (slowest) (FFmpeg nvenc_h264.c/nvenc_hevc.c/nvenc_av1.c "preset").
# FFmpeg's own aliases anchor the middle: "fast" = p1, "medium" = p4 (its default), "slow" = p7 with
# two passes (nvenc.c, nvenc_map_preset); x264's ten names are spread over the seven around p4.
NVENC_PRESET = {"ultrafast": "p1", "superfast": "p1", "veryfast": "p2", "faster": "p3", "fast": "p3",
                "medium": "p4", "slow": "p5", "slower": "p6", "veryslow": "p7", "placebo": "p7"}

# Intel's target usage, 1 (best quality) .. 7 (best speed): QSV's preset names are its values
# (qsvenc.h QSV_COMMON_OPTS: veryslow = MFX_TARGETUSAGE_BEST_QUALITY = 1 ... veryfast = 7), and
# VAAPI's compression_level is the driver's quality level on the same scale for Intel's iHD driver
# (vaapi_encode.c, vaapi_encode_init_quality: VAEncMiscParameterBufferQualityLevel, clipped to the
# driver's VAConfigAttribEncQualityRange).
TARGET_USAGE = {"veryfast": 7, "faster": 6, "fast": 5, "medium": 4, "slow": 3, "slower": 2, "veryslow": 1}
QSV_PRESET = {"ultrafast": "veryfast", "superfast": "veryfast", "veryfast": "veryfast", "faster": "faster",
              "fast": "fast", "medium": "medium", "slow": "slow", "slower": "slower", "veryslow": "veryslow",
              "placebo": "veryslow"}

# AMF: "quality" is its speed preset (amfenc_h264.c/amfenc_hevc.c: speed, balanced, quality;
# amfenc_av1.c adds high_quality).
AMF_QUALITY = {"ultrafast": "speed", "superfast": "speed", "veryfast": "speed", "faster": "speed",
               "fast": "balanced", "medium": "balanced", "slow": "quality", "slower": "quality",
               "veryslow": "quality", "placebo": "quality"}
AMF_QUALITY_AV1 = {**AMF_QUALITY, "veryslow": "high_quality", "placebo": "high_quality"}

# VideoToolbox has no speed preset, only two hints (videotoolboxenc.c COMMON_OPTIONS): prio_speed
# (kVTCompressionPropertyKey_PrioritizeEncodingSpeedOverQuality) and realtime
# (kVTCompressionPropertyKey_RealTime); fast and medium leave both to the encoder.
VT_SPEED = {"ultrafast": {"realtime": "1", "prio_speed": "1"}, "superfast": {"realtime": "1", "prio_speed": "1"},
            "veryfast": {"prio_speed": "1"}, "faster": {"prio_speed": "1"}, "fast": {}, "medium": {},
            "slow": {"prio_speed": "0"}, "slower": {"prio_speed": "0"}, "veryslow": {"prio_speed": "0"},
            "placebo": {"prio_speed": "0"}}

# Where a --preset that is not one of x264's names goes, as given (an encoder's own name: p7, balanced...).
SPEED_OPTION = {"nvenc": "preset", "qsv": "preset", "amf": "quality", "vaapi": "compression_level",
                "videotoolbox": "prio_speed"}

# x264's default ratios between frame types' quantisers (--ipratio 1.40, --pbratio 1.30; 6 QP
# double the quantiser step): I frames about 3 QP under P frames, B frames about 2 over.
I_OFFSET, B_OFFSET = -3, 2

FF_QP2LAMBDA = 118  # libavutil/avutil.h: global_quality is a quantiser times this where QSCALE is set

# What each family needs, for hardware_problem's one line.
NEEDS = {
    "nvenc": "an NVIDIA GPU with NVENC and its driver (libcuda, libnvidia-encode)",
    "qsv": "an Intel GPU with Quick Sync Video and its oneVPL runtime (libvpl, the iHD driver)",
    "amf": "an AMD GPU with AMF and its runtime (libamfrt64)",
    "vaapi": "a VAAPI device (/dev/dri) with the frames uploaded to it",
    "videotoolbox": "macOS's VideoToolbox",
}

# speed_hint: a run was bounded by its encoder when the encode stage was busy at least ENCODE_BOUND
# of the wall time while the model was busy at most MODEL_IDLE of it.
ENCODE_BOUND, MODEL_IDLE = 0.8, 0.5
# One encoder instance per 4 cores, at most 8 (as vsr.pipeline.default_encoders chooses by default:
# x264's frame threads scale to about 4 per instance).
CORES_PER_ENCODER, MOST_ENCODERS = 4, 8


def encoders_for(cores: int) -> int:
    """Software encoder instances that fill ``cores`` (x264's frame threads scale well to about
    :data:`CORES_PER_ENCODER` per instance at 1080p; its lookahead is serial), at most
    :data:`MOST_ENCODERS`: what a run the model does not bound uses (vsr.pipeline.default_encoders)."""
    return max(1, min(MOST_ENCODERS, cores // CORES_PER_ENCODER))
# Software encoders and their codec, so a hardware encoder of the same codec can be named.
SOFTWARE = {"libx264": "h264", "libx264rgb": "h264", "libopenh264": "h264", "libx265": "hevc", "libkvazaar": "hevc",
            "libsvtav1": "av1", "libaom-av1": "av1", "librav1e": "av1"}
# The family tried first for each torch device type (the others follow in FAMILIES' order).
DEVICE_FAMILY = {"cuda": "nvenc", "xpu": "qsv", "mps": "videotoolbox"}


def family(encoder_name: str | None) -> str | None:
    """``"nvenc"``, ``"qsv"``, ``"vaapi"``, ``"amf"`` or ``"videotoolbox"`` for an H.264, HEVC or AV1
    hardware encoder's name (``hevc_nvenc``), else None."""
    codec, _, suffix = (encoder_name or "").rpartition("_")
    return suffix if codec in CODECS and suffix in FAMILIES else None


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _quality(fam: str, codec: str, crf: int) -> dict[str, str]:
    """The options that keep the quality near x264's ``crf``.  x264's crf is an average H.264
    quantiser, so it is used as the QP (0-51) of H.264 and HEVC; AV1's quantiser index (0-255) and
    its 0-63 quality scale are scaled linearly from it (crf 18 -> qindex 90, q 22)."""
    av1 = codec == "av1"
    qp = _clamp(crf, 0, 51)

    def scaled(q: int) -> str:  # a QP as this codec counts it
        return str(_clamp(round(q * 255 / 51), 0, 255) if av1 else _clamp(q, 0, 51))

    if fam == "nvenc":
        # Constant quality is -rc vbr -cq N -b:v 0 (nvenc.c, nvenc_setup_rate_control: with cq set the
        # average bitrate is dropped); cq 0 means "automatic", so crf 0 becomes constant QP 0.
        if qp == 0:
            return {"rc": "constqp", "qp": "0"}
        return {"rc": "vbr", "cq": str(round(qp * 63 / 51) if av1 else qp), "b": "0"}
    if fam == "qsv":
        # global_quality > 0 with no maxrate selects ICQ, quality 1-51 (qsvenc.c, select_rc_mode).
        return {"global_quality": str(max(1, qp))}
    if fam == "vaapi":
        # Quality set, no bitrate: FFmpeg tries ICQ, then CQP, with this number as the ICQ factor or
        # the QP (vaapi_encode.c, vaapi_encode_init_rate_control).  AV1's CQP reads it as a qindex
        # (vaapi_encode_av1.c), which ICQ's 1-51 factor is not, so AV1 asks for CQP.
        if av1:
            return {"rc_mode": "CQP", "global_quality": scaled(qp), "b": "0"}
        return {"global_quality": str(max(1, qp)), "b": "0"}
    if fam == "amf":
        # Constant QP per frame type (amfenc_*.c: rc cqp, qp_i/qp_p/qp_b), I and B frames offset as
        # x264's ratios would (none at crf 0, x264's lossless).
        i, b = (qp + I_OFFSET, qp + B_OFFSET) if qp else (0, 0)
        return {"rc": "cqp", "qp_i": scaled(i), "qp_p": scaled(qp), "qp_b": scaled(b)}
    # VideoToolbox: -q:v N (flags +qscale, global_quality N * FF_QP2LAMBDA) sets its quality to N/100
    # (videotoolboxenc.c, vtenc_create_encoder; Apple silicon only).  crf 0 -> 100, 18 -> 65, 51 -> 1.
    q = _clamp(round(100 - qp * 100 / 51), 1, 100)
    return {"flags": "+qscale", "global_quality": str(q * FF_QP2LAMBDA)}


def _speed(fam: str, codec: str, preset: str) -> dict[str, str]:
    """The options that give about the speed of x264's ``preset``; a name x264 does not have is the
    encoder's own and goes to its speed option as given."""
    if preset not in X264_PRESETS:
        return {SPEED_OPTION[fam]: preset}
    if fam == "nvenc":
        return {"preset": NVENC_PRESET[preset]}
    if fam == "qsv":
        return {"preset": QSV_PRESET[preset]}
    if fam == "vaapi":
        return {"compression_level": str(TARGET_USAGE[QSV_PRESET[preset]])}
    if fam == "amf":
        return {"quality": (AMF_QUALITY_AV1 if codec == "av1" else AMF_QUALITY)[preset]}
    return dict(VT_SPEED[preset])


def quality_options(encoder_name: str, crf: int | None, preset: str | None, private: set[str]) -> dict[str, str]:
    """The options for a hardware encoder that give constant quality near x264's ``crf`` and about the
    speed of x264's ``preset`` (either None: not asked).  ``private`` is the encoder's own option
    names; a private option it lacks is left out, generic ones (:data:`GENERIC`) are always given.
    Empty for an encoder :func:`family` does not know."""
    fam = family(encoder_name)
    if fam is None:
        return {}
    codec = encoder_name.rpartition("_")[0]
    opts: dict[str, str] = {}
    if crf is not None:
        opts.update(_quality(fam, codec, crf))
    if preset:
        opts.update(_speed(fam, codec, preset))
    return {k: v for k, v in opts.items() if k in GENERIC or k in private}


def _open(cc: av.CodecContext) -> None:
    """Open ``cc`` (one place, so a test can stand in for a machine that has the hardware)."""
    cc.open()


def _trial_open(encoder: av.codec.Codec, size: tuple[int, int]) -> str | None:
    """Open ``encoder`` on a ``size`` picture in a pixel format it takes from memory: None if it
    opens, else what FFmpeg logged (its warnings and errors, one line), or its error.

    FFmpeg says why in its log, not in the error code ("Cannot load libcuda.so.1" comes back as
    EPERM), so the log is listened to, on this thread only, for the open; its level is given back
    afterwards (the process's logging is otherwise the caller's)."""
    formats = [f.name for f in encoder.video_formats or []]
    cc = av.CodecContext.create(encoder.name, "w")
    cc.width, cc.height = size
    cc.pix_fmt = next((f for f in ("yuv420p", "nv12") if f in formats), formats[0] if formats else "yuv420p")
    cc.time_base = Fraction(1, 25)
    cc.framerate = Fraction(25)
    level = av.logging.get_level()
    av.logging.set_level(av.logging.WARNING)
    try:
        with av.logging.Capture(local=True) as logs:
            try:
                _open(cc)
                return None
            except (av.FFmpegError, ValueError) as exc:
                error = exc
    finally:
        av.logging.set_level(level)
    said = dict.fromkeys(" ".join(text.split()) for lvl, _, text in logs if lvl <= av.logging.WARNING)
    return "; ".join(s for s in said if s) or getattr(error, "strerror", None) or str(error)


def hardware_problem(encoder_name: str, size: tuple[int, int] = (256, 256)) -> str | None:
    """What this machine lacks to run a hardware encoder, as one line, or None if it opens (on a
    ``size`` picture) or is not one :func:`family` knows.  A VAAPI encoder takes frames on a VA
    surface only, which vsr does not upload, so it always has a problem."""
    fam = family(encoder_name)
    if fam is None:
        return None
    needs = f"{encoder_name} needs {NEEDS[fam]}"
    try:
        encoder = av.codec.Codec(encoder_name, "w")
    except (av.codec.codec.UnknownCodecError, ValueError):
        return f"{needs}, and this FFmpeg ({av.ffmpeg_version_info}, in PyAV {av.__version__}) is built without it"
    if fam == "vaapi":
        codec = encoder_name.rpartition("_")[0]
        return (f"{needs}: vsr gives encoders frames in memory, not on a VA surface "
                f"(use {codec}_qsv on Intel, {codec}_amf on AMD, or a software encoder)")
    said = _trial_open(encoder, size)
    return None if said is None else f"{needs}; FFmpeg says: {said}"


def speed_hint(encode_share: float, model_share: float, encoders: int, cores: int, device_type: str, codec: str,
               available: Callable[[str], bool]) -> str | None:
    """One line for the end of a run the encoder held back (its stage busy at least
    :data:`ENCODE_BOUND` of the wall time, the model at most :data:`MODEL_IDLE`), naming what would go
    faster on this machine: a hardware encoder of the same codec that ``available(name)`` says opens
    (for example ``lambda n: hardware_problem(n) is None``), the family of ``device_type`` (the
    model's torch device: ``cuda``...) tried first; for a software encoder, more instances
    (``--encoders N``, one per :data:`CORES_PER_ENCODER` of ``cores``) than the ``encoders`` the run
    had; else a faster preset.
    None for any other run.  ``codec`` is the encoder's name (``libx264``)."""
    if encode_share < ENCODE_BOUND or model_share > MODEL_IDLE:
        return None
    faster = []
    target = SOFTWARE.get(codec)
    if target is not None:
        first = DEVICE_FAMILY.get(device_type)
        order = sorted(FAMILIES, key=lambda f: f != first)
        hardware = next((name for name in (f"{target}_{f}" for f in order) if available(name)), None)
        if hardware is not None:
            faster.append(f"--codec {hardware}")
    more = encoders_for(cores)
    if more > encoders and family(codec) is None:  # cores speed a software encoder, not a chip's engine
        faster.append(f"--encoders {more}")
    if not faster:
        faster.append("a faster --preset")
    return (f"the encoder set the pace (busy {encode_share:.0%} of the run, the model {model_share:.0%}); "
            f"faster here: {' or '.join(faster)}")
