"""Byte-level tokenizer with the four special tokens that BAGEL's sequences use.

Ids 0-255 are the UTF-8 bytes. The special tokens follow, in the roles that
Qwen2.5's tokenizer gives them in BAGEL: ``<|im_start|>`` opens a text span
(bos), ``<|im_end|>`` closes it (eos), and ``<|vision_start|>`` /
``<|vision_end|>`` wrap every image block, ViT or VAE.
"""

from __future__ import annotations

BOS_ID = 256  # <|im_start|>
EOS_ID = 257  # <|im_end|>
VISION_START_ID = 258  # <|vision_start|>
VISION_END_ID = 259  # <|vision_end|>
PAD_ID = 260
# Padded to a multiple of 8 so the embedding and LM head have aligned shapes.
VOCAB_SIZE = 264

SPECIAL_TOKENS = {
    "<|im_start|>": BOS_ID,
    "<|im_end|>": EOS_ID,
    "<|vision_start|>": VISION_START_ID,
    "<|vision_end|>": VISION_END_ID,
    "<|pad|>": PAD_ID,
}


class ByteTokenizer:
    """Encode text as UTF-8 bytes; decode ids back, skipping special tokens."""

    bos_id = BOS_ID
    eos_id = EOS_ID
    vision_start_id = VISION_START_ID
    vision_end_id = VISION_END_ID
    pad_id = PAD_ID
    vocab_size = VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        data = bytes(i for i in ids if 0 <= i < 256)
        # A sampled sequence can end inside a multi-byte character.
        return data.decode("utf-8", errors="replace")
