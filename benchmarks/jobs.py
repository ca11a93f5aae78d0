"""The platform's overhead and throughput: one job end to end vs the same inference in-process,
and jobs/s with 1, 8 and 32 concurrent clients.

Runs the real local stack (Valkey, gateway, Celery encode and generate workers, SQLite, local
object store; `services.stack.LocalStack`, what `mossctl up` runs) with a `small`-preset
checkpoint (random weights). Each job gets its own audio, so the encoder always runs (no feature
cache hits). Latencies are medians over repeats; the in-process baseline loads the same
checkpoint and runs the same clip, prompt and token budget through `model.generate`. Clients
wait for results with the API's long poll (`GET /v1/jobs/{id}?wait=30`).

    .venv/bin/python benchmarks/jobs.py [--preset small] [--new-tokens 16] [--clients 1,8,32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from model import MossAudioModel, MossAudioProcessor, preset_config
from model.processor import default_prompt
from model.tasks import TASK_PROMPTS
from services.core.settings import Settings
from services.stack import LocalStack, free_port


def wav_bytes(seconds: float, seed: int) -> bytes:
    import io
    import wave

    rng = np.random.default_rng(seed)
    pcm = (rng.standard_normal(int(seconds * 16_000)) * 3000).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def run_job(client: httpx.Client, data: bytes, new_tokens: int) -> float:
    start = time.perf_counter()
    job = client.post(
        "/v1/jobs",
        files={"file": ("clip.wav", data)},
        data={"task": "caption", "max_new_tokens": str(new_tokens)},
    ).json()
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        job = client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()  # long poll
    if job["status"] != "succeeded":
        raise RuntimeError(f"job ended {job['status']}: {job.get('error')}")
    return time.perf_counter() - start


def in_process_rate(settings: Settings, clip_seconds: float, new_tokens: int, count: int) -> float:
    """Jobs/s with `count` concurrent jobs run in this process on the workers' own code (the
    encode batcher and the batching engine, torch threads as the generator worker has them),
    with no gateway, queue or store: the ceiling the platform's figure is measured against."""
    from concurrent.futures import ThreadPoolExecutor

    from model import load_audio
    from services.inference.local import LocalBackend

    backend = LocalBackend(settings)
    served = backend.lookup(settings.default_model)

    def job(seed: int) -> str:
        audio = load_audio(wav_bytes(clip_seconds, seed))
        version, (encoded,) = backend.encode(served, [audio])
        instruction = TASK_PROMPTS["caption"]
        generation = backend.generate(served, encoded, instruction, new_tokens, 0.0, version)
        generation.wait(600)
        return generation.text()

    job(0)  # warm up
    jobs = 2 * count
    with ThreadPoolExecutor(count) as pool:
        start = time.perf_counter()
        list(pool.map(job, range(50_000, 50_000 + jobs)))
        elapsed = time.perf_counter() - start
    backend.close()
    return jobs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--clip-seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--jobs-per-client", type=int, default=2)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="every worker's MOSS_TORCH_THREADS (default: the stack splits the cores)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny preset, 1 and 2 clients")
    args = parser.parse_args()
    if args.quick:
        args.preset, args.clients, args.repeats, args.jobs_per_client = "tiny", "1,2", 1, 1
        args.new_tokens = 4
    clients = [int(c) for c in args.clients.split(",")]

    home = Path(tempfile.mkdtemp(prefix="moss-bench-"))
    checkpoint = home / "models" / args.preset
    torch.manual_seed(0)
    model = MossAudioModel(preset_config(args.preset)).eval()
    model.save_pretrained(checkpoint)
    processor = MossAudioProcessor.from_pretrained(None)
    processor.save_pretrained(checkpoint)

    # In-process baseline: the same checkpoint, clip, prompt and token budget.
    from model import load_audio

    def inference(seed: int) -> float:
        start = time.perf_counter()
        audio = load_audio(wav_bytes(args.clip_seconds, seed))
        inputs = processor(text=default_prompt(TASK_PROMPTS["caption"]), audios=[audio])
        model.generate(**inputs, max_new_tokens=args.new_tokens, eos_token_id=[])
        return time.perf_counter() - start

    def on_a_thread(seed: int) -> float:  # where a worker runs it: not the main thread
        box: list[float] = []
        thread = threading.Thread(target=lambda: box.append(inference(seed)))
        thread.start()
        thread.join()
        return box[0]

    inference(0)  # warm up
    baseline = [inference(10_000 + i) for i in range(args.repeats)]
    threaded = [on_a_thread(20_000 + i) for i in range(args.repeats)]

    settings = Settings(
        home=home,
        port=free_port(),
        default_model=args.preset,
        max_new_tokens=args.new_tokens,
        generator_concurrency=max(clients),
        generator_max_batch=max(clients),
        torch_threads=args.torch_threads,
    )
    stack = LocalStack(settings)
    stack.start()
    try:
        stack.wait_ready(timeout=180)
        headers = {"Authorization": f"Bearer {stack.api_key}"}
        with httpx.Client(base_url=stack.url, headers=headers, timeout=300) as client:
            run_job(client, wav_bytes(args.clip_seconds, seed=1), args.new_tokens)  # load models
            platform = [
                run_job(client, wav_bytes(args.clip_seconds, seed=100 + i), args.new_tokens)
                for i in range(args.repeats)
            ]
        throughput = {}
        for count in clients:
            done: list[float] = []
            seeds = iter(range(1_000 * count, 1_000 * count + count * args.jobs_per_client))
            lock = threading.Lock()

            def client_loop(done=done, seeds=seeds, lock=lock) -> None:
                with httpx.Client(base_url=stack.url, headers=headers, timeout=600) as http:
                    for _ in range(args.jobs_per_client):
                        with lock:
                            seed = next(seeds)
                        done.append(
                            run_job(http, wav_bytes(args.clip_seconds, seed), args.new_tokens)
                        )

            threads = [threading.Thread(target=client_loop) for _ in range(count)]
            start = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - start
            throughput[count] = (len(done) / elapsed, statistics.median(done))
    finally:
        stack.stop()

    inproc, through = statistics.median(baseline), statistics.median(platform)
    from services.stack import torch_threads

    workers = {q: torch_threads(q, settings) for q in ("encode", "generate")}
    print(
        f"preset {args.preset}, {args.clip_seconds:.0f} s clips, {args.new_tokens} new tokens, "
        f"CPU, torch threads in-process {torch.get_num_threads()}, in the workers {workers}; "
        f"medians of {args.repeats}"
    )
    print(
        f"one job, in-process: {inproc * 1000:.0f} ms; through the platform: "
        f"{through * 1000:.0f} ms; overhead {1000 * (through - inproc):.0f} ms "
        f"(x{through / inproc:.2f})"
    )
    on_thread = statistics.median(threaded)
    print(
        f"  the same in-process inference on a non-main thread, as workers run it: "
        f"{on_thread * 1000:.0f} ms (x{on_thread / inproc:.2f}); the platform vs that: "
        f"{1000 * (through - on_thread):.0f} ms (x{through / on_thread:.2f})"
    )
    threads = torch_threads("generate", settings)
    torch.set_num_threads(threads)
    ceiling = {
        count: in_process_rate(settings, args.clip_seconds, args.new_tokens, count)
        for count in clients
    }
    first = clients[0]
    for count, (rate, latency) in throughput.items():
        print(
            f"{count:3d} concurrent clients: {rate:.2f} jobs/s (x{rate / throughput[first][0]:.2f} "
            f"of {first}), median latency {latency * 1000:.0f} ms "
            f"({count * args.jobs_per_client} jobs); in-process with {count} concurrent jobs, "
            f"no platform: {ceiling[count]:.2f} jobs/s (x{ceiling[count] / ceiling[first]:.2f}); "
            f"the platform reaches {rate / ceiling[count]:.2f} of it"
        )


if __name__ == "__main__":
    main()
