"""Token ids the model and processor rely on (Qwen3 vocabulary plus MOSS-Audio's audio tokens)."""

AUDIO_TOKEN_ID = 151654  # <|AUDIO|> (the id Qwen3 names <|vision_pad|>)
AUDIO_BOS_ID = 151669  # <|audio_bos|>
AUDIO_EOS_ID = 151670  # <|audio_eos|>
ENDOFTEXT_ID = 151643  # <|endoftext|>: also the padding id
IM_START_ID = 151644  # <|im_start|>
IM_END_ID = 151645  # <|im_end|>
THINK_START_ID = 151667  # <think>
THINK_END_ID = 151668  # </think>
DIGIT_IDS = {str(d): 15 + d for d in range(10)}  # '0'..'9' -> 15..24

AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"

# Generation stops at the end of the assistant turn, or at end of text.
STOP_TOKEN_IDS = (IM_END_ID, ENDOFTEXT_ID)
