"""KServe model servers for MOSS-Audio: an encoder and a generator predictor.

Both are `kserve.Model` subclasses around the same functions the workers run
(services.inference.local), speak the Open Inference Protocol (V2) over REST and gRPC, list their
tensors in the model metadata, and only accept traffic once the weights are loaded (the server
starts listening after `load()`). A predictor serves one checkpoint, named by `--model`:

- a directory (KServe's storage initializer puts `storageUri` at /mnt/models), or
- a registry reference `models:/NAME@ALIAS` / `models:/NAME/VERSION` (MOSS_MLFLOW_URI), or
- a platform model reference `NAME[@ALIAS]` (MOSS_MODELS / MOSS_MODELS_DIR / the registry).

Only this package imports `kserve`; never import it next to `tritonclient.grpc`.
"""

from __future__ import annotations

from ..core.modelref import model_version, resolve
from ..core.settings import Settings
from ..inference.models import LoadedModel, ModelCache, set_torch_threads, torch_dtype


def load_model(ref: str, settings: Settings, encoder_only: bool = False) -> LoadedModel:
    """The checkpoint a predictor serves, loaded on MOSS_DEVICE.

    The encoder predictor keeps only the audio encoder (0.64B parameters of the 4B/8B models'
    5.2B/9.1B), so it fits a small GPU next to nothing else.
    """
    set_torch_threads(settings.torch_threads)
    try:
        spec = resolve(ref, settings, allow_paths=True)
    except ValueError as exc:
        raise LookupError(str(exc)) from exc
    if not encoder_only:
        return ModelCache(settings.device, capacity=1, dtype=settings.dtype).get(spec)
    from model import MossAudioModel, MossAudioProcessor

    model = MossAudioModel.from_pretrained(
        spec.path, dtype=torch_dtype(settings.dtype, settings.device)
    )
    for part in ("language_model", "lm_head", "audio_adapter", "deepstack_audio_merger_list"):
        setattr(model, part, None)  # freed before the move: only the encoder reaches the GPU
    model = model.to(settings.device).eval()
    processor = MossAudioProcessor.from_pretrained(spec.path)
    return LoadedModel(spec, model_version(spec.path), model, processor)
