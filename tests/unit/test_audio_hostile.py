"""Audio that must not take a process down: many channels, every PCM flavour, files that point
FFmpeg at other files, absurd sample rates, decompression bombs, and real decoder crashes."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import soundfile as sf

from model.audio import AudioDecodeError, load_audio, probe_audio
from model.audio_sandbox import (
    CHILD_COMMAND,
    DecodeLimits,
    _run,
    load_audio_isolated,
    probe_audio_isolated,
)
from tests.reliability.hostile_corpus import float_wav, pcm16, wav

RATE = 44_100
SUBTYPES = ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "ALAW", "ULAW"]


def amplitudes(channels: int) -> np.ndarray:
    """A different loudness per channel: a decoder that drops or misreads channels shows."""
    return np.linspace(0.1, 0.5, channels) if channels > 1 else np.array([0.3])


def multichannel_wav(channels: int, subtype: str, seconds: float = 0.5) -> bytes:
    t = np.arange(int(seconds * RATE)) / RATE
    sine = np.sin(2 * np.pi * 440.0 * t)
    frames = (sine[:, None] * amplitudes(channels)[None, :]).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, frames, RATE, format="WAV", subtype=subtype)
    return buffer.getvalue()


def silent_flac(seconds: float, rate: int = 8_000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * rate), dtype=np.int16), rate, format="FLAC")
    return buffer.getvalue()


def check_mean_of_channels(audio: np.ndarray, channels: int, subtype: str) -> None:
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 8_000) <= 16
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    assert abs(np.argmax(spectrum) * 16_000 / len(audio) - 440.0) < 5.0
    rms = float(np.sqrt(np.mean(audio[500:-500] ** 2)))
    expected = float(amplitudes(channels).mean()) / np.sqrt(2)
    tolerance = 0.05 if subtype in ("PCM_U8", "ALAW", "ULAW") else 0.01  # 8-bit quantisation
    assert rms == pytest.approx(expected, rel=tolerance)


@pytest.mark.parametrize("subtype", SUBTYPES)
@pytest.mark.parametrize("channels", [1, 2, 6, 8, 16, 64])
def test_any_channel_count_and_pcm_flavour_is_the_mean_of_its_channels(channels, subtype) -> None:
    data = multichannel_wav(channels, subtype)
    check_mean_of_channels(load_audio(data), channels, subtype)
    info = probe_audio(data)
    assert (info.channels, info.sample_rate) == (channels, RATE)
    assert info.seconds == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("channels", [8, 64])
def test_isolated_decoding_gives_the_same_samples(channels) -> None:
    data = multichannel_wav(channels, "PCM_24")
    isolated = load_audio_isolated(data)
    np.testing.assert_array_equal(isolated, load_audio(data))
    assert isolated.flags.writeable
    assert probe_audio_isolated(data).channels == channels


@pytest.mark.parametrize(
    "body",
    [
        b"ffconcat version 1.0\nfile clip.wav\n",
        b"#EXTM3U\n#EXTINF:1.0,\nclip.wav\n#EXT-X-ENDLIST\n",
        b"[playlist]\nFile1=clip.wav\nNumberOfEntries=1\n",
        b"file:clip.wav",
    ],
)
def test_files_that_name_other_files_are_not_opened(body, tmp_path, monkeypatch) -> None:
    """A 46-byte ffconcat text once made load_audio decode a file of the working directory."""
    (tmp_path / "clip.wav").write_bytes(multichannel_wav(1, "PCM_16"))
    monkeypatch.chdir(tmp_path)
    for fn in (load_audio, probe_audio):
        with pytest.raises(AudioDecodeError) as info:
            fn(body)
        assert info.value.code == "not_audio"


def test_a_1_hz_wav_is_not_an_hour_of_audio() -> None:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(3600, dtype=np.int16), 1, format="WAV", subtype="PCM_16")
    data = buffer.getvalue()
    assert len(data) < 8_000
    for fn in (load_audio, probe_audio):
        with pytest.raises(AudioDecodeError) as info:
            fn(data)
        assert info.value.code == "unsupported_sample_rate"


def test_a_long_silent_flac_is_refused_from_its_header_and_while_decoding() -> None:
    data = silent_flac(600.0)  # 10 minutes in a few KB
    assert len(data) < 200_000
    with pytest.raises(AudioDecodeError) as info:
        probe_audio(data, max_seconds=60)
    assert info.value.code == "audio_too_long"
    with pytest.raises(AudioDecodeError) as info:
        load_audio(data, max_seconds=60)
    assert info.value.code == "audio_too_long"


def test_a_header_without_duration_is_measured_from_the_packets() -> None:
    """STREAMINFO's total-samples field set to 0 ("unknown"): the limit still holds, measured
    by demuxing (no decoding), and decoding stops at the limit."""
    data = bytearray(silent_flac(600.0))
    base = 8  # "fLaC" + the metadata block header
    data[base + 13] &= 0xF0
    data[base + 14 : base + 18] = b"\x00\x00\x00\x00"
    data = bytes(data)
    assert probe_audio(data).seconds == pytest.approx(600.0, abs=1.0)
    with pytest.raises(AudioDecodeError) as info:
        probe_audio(data, max_seconds=60)
    assert info.value.code == "audio_too_long"
    with pytest.raises(AudioDecodeError) as info:
        load_audio(data, max_seconds=60)
    assert info.value.code == "audio_too_long"


def test_unaccepted_codecs_are_refused_before_decoding() -> None:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(8000, dtype=np.float32), 8000, format="WAV", subtype="GSM610")
    with pytest.raises(AudioDecodeError) as info:
        probe_audio(buffer.getvalue())
    assert info.value.code == "unsupported_codec"


# --- the sandbox: real crashes and real limits -------------------------------------------

# PyAV 18 reading planar float frames of 8 channels: a segmentation fault in native code (the
# bug our decoder now avoids), run as the child of the sandbox.
PLANAR_CRASH = (
    sys.executable,
    "-c",
    "import io, av\n"
    "from model.audio_sandbox import run_zygote\n"
    "def crash(request, data, limits):\n"
    "    container = av.open(io.BytesIO(data), format='wav')\n"
    "    resampler = av.AudioResampler(format='fltp', rate=16000)\n"
    "    for frame in container.decode(audio=0):\n"
    "        for out in resampler.resample(frame):\n"
    "            out.to_ndarray()\n"
    "    return {'ok': True, 'samples': 0}, b''\n"
    "run_zygote(crash)\n",
)


def test_a_native_decoder_crash_is_a_clear_error_not_a_dead_process() -> None:
    with pytest.raises(AudioDecodeError) as info:
        _run(PLANAR_CRASH, "load", multichannel_wav(8, "PCM_16"), None, DecodeLimits())
    assert info.value.code == "decoder_crashed"
    assert "SIGSEGV" in info.value.message
    # This process is alive and the real child decodes the same file.
    assert len(load_audio_isolated(multichannel_wav(8, "PCM_16"))) == 8_000


def test_memory_and_time_limits_stop_the_child() -> None:
    bomb = silent_flac(600.0)  # decodes to 38 MB of 16 kHz float32
    with pytest.raises(AudioDecodeError) as info:
        load_audio_isolated(bomb, limits=DecodeLimits(memory_mb=24))
    assert info.value.code == "decode_limit_exceeded"
    with pytest.raises(AudioDecodeError) as info:
        load_audio_isolated(bomb, limits=DecodeLimits(timeout_s=0.01))
    assert info.value.code == "decode_timeout"
    assert len(load_audio_isolated(bomb)) == 600 * 16_000  # within the default limits


def test_the_child_gets_no_secrets(monkeypatch) -> None:
    monkeypatch.setenv("MOSS_API_KEY", "very-secret")
    show_env = (
        sys.executable,
        "-c",
        "import os\n"
        "from model.audio_sandbox import run_zygote\n"
        "run_zygote(lambda request, data, limits: "
        "({'ok': True, 'samples': 0, 'env': sorted(os.environ)}, b''))\n",
    )
    header, _ = _run(show_env, "load", b"x", None, DecodeLimits())
    assert "MOSS_API_KEY" not in header["env"]
    assert CHILD_COMMAND[1:] == ("-m", "model.audio_sandbox")


def test_decoder_failures_map_to_clear_http_errors() -> None:
    from services.core.errors import audio_error

    for code in ("not_audio", "truncated_audio", "unsupported_codec", "too_many_channels"):
        assert audio_error(code, "m").status == 415
    for code in ("decoder_crashed", "decode_limit_exceeded", "decode_timeout", "audio_too_long"):
        error = audio_error(code, "m")
        assert (error.status, error.code, error.message) == (422, code, "m")


# --- the zygote: one fresh child per request, forked ------------------------------------------

REMEMBERS = (
    sys.executable,
    "-c",
    "import os, time\n"
    "from model.audio_sandbox import run_zygote\n"
    "seen = []\n"
    "def serve(request, data, limits):\n"
    "    if data == b'hang':\n"
    "        time.sleep(60)\n"
    "    seen.append(data.decode())\n"
    "    return {'ok': True, 'samples': 0, 'pid': os.getpid(), 'seen': seen}, b''\n"
    "run_zygote(serve)\n",
)


def test_every_request_gets_a_fresh_child_that_remembers_nothing() -> None:
    first, _ = _run(REMEMBERS, "load", b"one", None, DecodeLimits())
    second, _ = _run(REMEMBERS, "load", b"two", None, DecodeLimits())
    assert first["pid"] != second["pid"]
    assert second["seen"] == ["two"]  # nothing of the first upload reached the second child


def test_a_hung_child_is_killed_at_the_wall_clock_limit_and_the_next_request_is_served() -> None:
    with pytest.raises(AudioDecodeError) as info:
        _run(REMEMBERS, "load", b"hang", None, DecodeLimits(timeout_s=0.5))
    assert info.value.code == "decode_timeout"
    header, _ = _run(REMEMBERS, "load", b"after", None, DecodeLimits())
    assert header["seen"] == ["after"]


def test_a_dead_zygote_is_started_again() -> None:
    from model.audio_sandbox import _zygotes

    _run(REMEMBERS, "load", b"x", None, DecodeLimits())
    zygote = _zygotes.get(REMEMBERS)
    zygote.process.kill()
    zygote.process.wait()
    header, _ = _run(REMEMBERS, "load", b"y", None, DecodeLimits())
    assert header["seen"] == ["y"]


def test_concurrent_requests_each_get_their_own_samples() -> None:
    from concurrent.futures import ThreadPoolExecutor

    clips = [multichannel_wav(channels, "PCM_16") for channels in (1, 2, 3, 4, 5, 6, 7, 8)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(load_audio_isolated, clips))
    for clip, samples in zip(clips, got, strict=True):
        np.testing.assert_array_equal(samples, load_audio(clip))


# --- found by the hostile corpus (tests/reliability) ------------------------------------------


@pytest.mark.parametrize("header", [{"tag": 0x1234}, {"bits": 0}])
def test_a_wav_format_ffmpeg_has_no_decoder_for_is_an_unsupported_codec(header) -> None:
    """PyAV gives such a stream no codec context: reading its name was an AttributeError (the
    sandbox's catch-all reported a vague `not_audio`; in-process it escaped)."""
    data = wav(pcm16(1.0), **header)
    for fn in (load_audio, probe_audio):
        with pytest.raises(AudioDecodeError) as info:
            fn(data)
        assert info.value.code == "unsupported_codec"


@pytest.mark.parametrize(("channels", "code"), [(0, "not_audio"), (1000, "too_many_channels")])
def test_channel_counts_ffmpeg_cannot_lay_out(channels, code) -> None:
    """FFmpeg reports both as 0 channels ("the audio has 0 channels; at most 64" was the
    message for 1000): the WAV header's own count is read first."""
    data = wav(pcm16(0.01, channels=max(channels, 1)), channels=channels, block_align=2)
    for fn in (load_audio, probe_audio):
        with pytest.raises(AudioDecodeError) as info:
            fn(data)
        assert info.value.code == code
        assert str(channels) in info.value.message or channels == 0


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_the_probe_refuses_non_finite_samples_too(value) -> None:
    """load_audio refused them, the gateway's probe accepted them: the job failed in the
    worker instead of a 415 at upload."""
    samples = 0.3 * np.sin(np.arange(16_000) / 10.0)
    samples[100] = value
    for fn in (load_audio, probe_audio):
        with pytest.raises(AudioDecodeError) as info:
            fn(float_wav(samples))
        assert info.value.code == "not_audio" and "non-finite" in info.value.message


# --- found by fuzzing (tests/reliability/fuzz_decode.py) ---------------------------------------


def test_a_file_ffmpeg_cannot_seek_back_in_is_probed_from_a_fresh_demuxer() -> None:
    """atheris: a FLAC cut in half, 91 zero bytes inserted in its first frame and 6.8 KB cut
    from its middle. After the demux pass, seeking back to the start raised FFmpeg's EPERM as a
    PermissionError, which escaped probe_audio (the sandbox reported a vague `not_audio`)."""
    import av

    from tests.reliability.hostile_corpus import valid

    flac = valid("flac")
    data = flac[:595] + b"\0" * 91 + flac[595:8560] + flac[15329:17043]
    with av.open(io.BytesIO(data), format="flac") as container:
        for _ in container.demux(container.streams.audio[0]):
            pass
        try:
            container.seek(0)
        except av.error.FFmpegError:
            pass
        else:
            pytest.skip("this FFmpeg seeks back in it: the input no longer reproduces the bug")
    for source in (data, io.BytesIO(data)):
        with pytest.raises(AudioDecodeError) as info:
            probe_audio(source)
        assert info.value.code == "not_audio" and "cannot be decoded" in info.value.message
