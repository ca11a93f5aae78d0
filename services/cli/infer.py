"""`mossctl infer | demo`: run a checkpoint on a file in this process (no platform needed)."""

from __future__ import annotations

import json
import math
import sys
import tempfile
import wave
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from model.sampling import (
    MAX_NEW_TOKENS,
    MAX_TEMPERATURE,
    TEMPERATURE_RULE,
    SamplingError,
    check_sampling,
)

from .common import err, fail

app = typer.Typer()
DEFAULT_PROMPT = "Describe the audio."


def _load(model_dir: Path | None, preset: str | None, dtype: str, device: str, progress: Progress):
    import torch

    from model import MossAudioModel, MossAudioProcessor, preset_config

    task = progress.add_task("Loading tokenizer", total=None)
    processor = MossAudioProcessor.from_pretrained(model_dir)
    if preset is not None:
        progress.update(task, description=f"Building the {preset!r} preset (random weights)")
        torch.manual_seed(0)
        model = MossAudioModel(preset_config(preset))
    else:
        progress.update(task, description=f"Loading weights from {model_dir}")
        kwargs = {} if dtype == "auto" else {"dtype": getattr(torch, dtype)}
        model = MossAudioModel.from_pretrained(model_dir, **kwargs)
    model = model.to(device).eval()
    progress.update(task, description="Model ready", total=1, completed=1)
    return model, processor


@app.command()
def infer(
    audio: Annotated[Path, typer.Argument(help="Audio file: wav, flac, ogg/opus, mp3, m4a, webm.")],
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Checkpoint directory (released format).")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Build a preset with random weights instead (tiny, small).")
    ] = None,
    prompt: Annotated[
        str, typer.Option("--prompt", "-p", help="The instruction.")
    ] = DEFAULT_PROMPT,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=MAX_NEW_TOKENS)] = 256,
    temperature: Annotated[
        float, typer.Option(min=0.0, max=MAX_TEMPERATURE, help=f"{TEMPERATURE_RULE}.")
    ] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling.")] = None,
    max_segment_seconds: Annotated[
        float | None,
        typer.Option(
            min=1.0,
            help="Cut longer audio at quiet points into segments of at most this length "
            "(transcribing long recordings); default: the model sees the whole clip.",
        ),
    ] = None,
    time_markers: Annotated[bool, typer.Option(help="Time markers in the audio span.")] = True,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run one local inference and print the answer."""
    from model import AudioDecodeError, load_audio

    if (model is None) == (preset is None):
        fail("give exactly one of --model DIR or --preset NAME")
    if model is not None and not (model / "config.json").is_file():
        fail(f"{model} is not a checkpoint directory (no config.json)")
    if dtype not in {"auto", "float32", "bfloat16", "float16"}:
        fail(f"--dtype must be auto, float32, bfloat16 or float16, not {dtype!r}")
    try:
        check_sampling(max_new_tokens, temperature)  # the API's rule: 1e-300 is refused here too
    except SamplingError as exc:
        fail(f"--{exc.message.replace('_', '-')}")
    try:
        waveform = load_audio(audio)
    except FileNotFoundError:
        fail(f"no such audio file: {audio}")
    except AudioDecodeError as exc:
        fail(f"{audio}: {exc.message} [{exc.code}]")

    from model import preset_config
    from model.inference import run_inference

    if preset is not None:
        try:
            preset_config(preset)
        except ValueError as exc:
            fail(str(exc))

    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        loaded, processor = _load(model, preset, dtype, device, progress)
        processor.enable_time_marker = time_markers
        seconds = len(waveform) / 16000
        segments = math.ceil(seconds / max_segment_seconds) if max_segment_seconds else 1
        task = progress.add_task(
            f"Generating ({len(waveform) / 16000:.1f} s of audio, {segments} segment(s))",
            total=max_new_tokens * segments,
        )
        result = run_inference(
            loaded,
            processor,
            waveform,
            prompt,
            max_segment_seconds=max_segment_seconds,
            on_step=lambda n: progress.update(task, completed=n),
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else 1.0,
            top_p=top_p,
            seed=seed,
        )
    if as_json:
        sys.stdout.write(json.dumps(asdict(result), ensure_ascii=False, indent=2) + "\n")
        return
    if result.thinking:
        err.print(f"[dim]thinking: {result.thinking}[/]", highlight=False)
    sys.stdout.write(result.text + "\n")


@app.command()
def demo(
    output: Annotated[Path | None, typer.Option(help="Where to write the generated clip.")] = None,
) -> None:
    """Generate a 6 s clip (tones and a chirp) and run the tiny preset on it end to end."""
    path = output or Path(tempfile.gettempdir()) / "moss-audio-demo.wav"
    _write_demo_clip(path)
    err.print(f"Generated {path} (6.0 s, 16 kHz). Running the tiny preset (random weights):")
    infer(
        audio=path,
        model=None,
        preset="tiny",
        prompt="Describe the audio.",
        max_new_tokens=24,
        temperature=0.0,
        top_p=1.0,
        seed=None,
        max_segment_seconds=None,
        time_markers=True,
        dtype="auto",
        device="cpu",
        as_json=True,
    )
    err.print(
        "The tiny preset has random weights, so its text is noise; "
        "pass --model DIR to `mossctl infer` for a real checkpoint."
    )


def _write_demo_clip(path: Path) -> None:
    rate = 16_000
    t = np.arange(6 * rate) / rate
    tones = 0.3 * np.sin(2 * np.pi * np.where(t < 2, 440, np.where(t < 4, 660, 0)) * t)
    chirp = 0.3 * np.sin(2 * np.pi * (200 + 300 * (t - 4)) * (t - 4)) * (t >= 4)
    pcm = np.clip((tones + chirp) * 32767, -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
