"""Encoders and encoder-decoders on the decoder's components: HookedEncoder (BERT, RoBERTa,
DistilBERT, sentence-transformers) and HookedEncoderDecoder (T5), with TransformerLens's hook
names, shapes and methods. They know nothing of the decoder-only HookedTransformer.

Example:
    >>> from lmscope.encoders import HookedEncoder
    >>> model = HookedEncoder.from_pretrained("all-minilm-l6-v2")
"""

from lmscope.encoders.config import EncoderConfig
from lmscope.encoders.encoder import HookedEncoder, SentencePooling, pool_tokens
from lmscope.encoders.encoder_decoder import HookedEncoderDecoder

__all__ = [
    "EncoderConfig",
    "HookedEncoder",
    "HookedEncoderDecoder",
    "SentencePooling",
    "pool_tokens",
]
