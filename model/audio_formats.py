"""The audio the model takes (16 kHz), and which bytes we let FFmpeg open: audio containers
recognised by their magic bytes, and the audio codecs we decode.

FFmpeg guesses a format by asking every demuxer it has, and some of those read other files or
URLs: `concat` (a 46-byte ffconcat text names files to decode relative to the working
directory), HLS and other playlists, `image2` patterns. So we never let it guess: the first
bytes of an upload pick one demuxer from this list (or the upload is rejected), and `av.open`
gets that demuxer by name. Codecs are restricted too, because each decoder is native code that
parses hostile input; the list covers what phones, recorders, browsers and DAWs write.
"""

from __future__ import annotations

SAMPLE_RATE = 16_000  # what every decoded clip is resampled to: the model's front end

# Magic bytes -> FFmpeg demuxer. Checked in order; offsets are from the start of the file.
_ID3 = b"ID3"


def sniff_container(head: bytes) -> str | None:
    """The demuxer for a file that starts with `head` (>= 12 bytes), or None if not audio."""
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[4:8] == b"ftyp":  # ISO base media: m4a, mp4, 3gp, mov
        return "mov"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: webm, mka
        return "matroska"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:4] == b"caff":
        return "caf"
    if head[:3] == _ID3:  # an ID3v2 tag in front of MPEG audio (FFmpeg's mp3 demuxer skips it)
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # MPEG frame sync
        layer = (head[1] >> 1) & 0x3
        return "aac" if layer == 0 else "mp3"  # ADTS AAC has layer bits 00
    return None


# Decoders we run (FFmpeg decoder names). PCM of every width, A-law and mu-law, and the common
# compressed codecs. Anything else (video codecs, speech codecs of the 1990s, tracker formats)
# is rejected before a decoder sees a byte of it.
_CODECS = frozenset(
    {
        "flac",
        "alac",
        "vorbis",
        "libvorbis",
        "opus",
        "libopus",
        "mp3",
        "mp3float",
        "mp2",
        "mp2float",
        "aac",
        "aac_fixed",
        "adpcm_ms",
        "adpcm_ima_wav",
    }
)


def codec_allowed(name: str) -> bool:
    return name.startswith("pcm_") or name in _CODECS


ACCEPTED = "wav, flac, ogg/opus, mp3, m4a/aac, webm/mka, aiff, caf"
