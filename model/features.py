"""Log-mel features with Whisper's math (128 bins, n_fft 400, hop 160 at 16 kHz: 100 frames/s).

Numerically this is `WhisperFeatureExtractor._torch_extract_fbank_features` without the padding
to 30 s: a periodic Hann window, a centred STFT with reflect padding, power spectrum, Slaney mel
filters up to 8 kHz, log10 clamped at 1e-10, a floor 8 below the clip's maximum, then
(x + 4) / 4. The last STFT frame is dropped, so a clip of N samples gives N // 160 frames.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank

from .audio_formats import SAMPLE_RATE

N_FFT = 400
HOP_LENGTH = 160
N_MELS = 128
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
# One analysis window; shorter clips cannot be reflect-padded by the STFT.
MIN_SAMPLES = N_FFT


@functools.cache
def _mel_filters(n_mels: int) -> torch.Tensor:
    filters = mel_filter_bank(
        num_frequency_bins=1 + N_FFT // 2,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(filters.astype(np.float32)).T.contiguous()  # (n_mels, n_freq)


@functools.cache
def _window() -> torch.Tensor:
    return torch.hann_window(N_FFT)


def num_mel_frames(num_samples: int) -> int:
    """Mel frames for a clip of `num_samples` samples at 16 kHz."""
    return num_samples // HOP_LENGTH


def log_mel_spectrogram(audio: np.ndarray | torch.Tensor, n_mels: int = N_MELS) -> torch.Tensor:
    """(num_samples,) float waveform at 16 kHz -> (n_mels, num_samples // 160) float32."""
    wav = torch.as_tensor(audio, dtype=torch.float32)
    if wav.ndim != 1:
        raise ValueError(f"expected a mono waveform of shape (samples,), got {tuple(wav.shape)}")
    if wav.numel() < MIN_SAMPLES:
        raise ValueError(
            f"audio is too short: {wav.numel()} samples, at least {MIN_SAMPLES} (25 ms) needed"
        )
    stft = torch.stft(wav, N_FFT, HOP_LENGTH, window=_window(), return_complex=True)
    power = stft[..., :-1].abs() ** 2  # (n_freq, frames)
    mel = _mel_filters(n_mels) @ power  # (n_mels, frames)
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0
