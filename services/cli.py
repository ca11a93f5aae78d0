"""`mossctl`: the platform's command line.

    mossctl infer clip.mp3 --model /models/MOSS-Audio-4B-Instruct --prompt "Transcribe the audio."
    mossctl infer clip.wav --preset tiny          # random weights: a smoke run, no download
    mossctl demo                                  # generate a clip and run the tiny model on it
    mossctl up                                    # the whole platform locally; Ctrl-C stops it
    mossctl submit clip.wav --task transcribe     # a job through the API, with a progress bar
    mossctl jobs list | get ID | cancel ID;  mossctl keys create TENANT | list | revoke ID

Errors print one line saying what to fix and exit with a non-zero code.
"""

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
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="MOSS-Audio platform: run it locally, submit jobs, manage keys, run local inference.",
)
err = Console(stderr=True, soft_wrap=True)
DEFAULT_PROMPT = "Describe the audio."


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


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
    max_new_tokens: Annotated[int, typer.Option(min=1, max=8192)] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy.")] = 0.0,
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
        _fail("give exactly one of --model DIR or --preset NAME")
    if model is not None and not (model / "config.json").is_file():
        _fail(f"{model} is not a checkpoint directory (no config.json)")
    if dtype not in {"auto", "float32", "bfloat16", "float16"}:
        _fail(f"--dtype must be auto, float32, bfloat16 or float16, not {dtype!r}")
    try:
        waveform = load_audio(audio)
    except FileNotFoundError:
        _fail(f"no such audio file: {audio}")
    except AudioDecodeError as exc:
        _fail(f"{audio}: {exc.message} [{exc.code}]")

    from model import preset_config
    from model.inference import run_inference

    if preset is not None:
        try:
            preset_config(preset)
        except ValueError as exc:
            _fail(str(exc))

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


def main() -> None:  # pragma: no cover - console entry point
    app()


from .cli_lifecycle import register as register_lifecycle  # noqa: E402 - join the same app
from .cli_platform import register  # noqa: E402
from .cli_serve import register as register_serve  # noqa: E402

register(app)
register_lifecycle(app)
register_serve(app)

if __name__ == "__main__":  # pragma: no cover
    main()
