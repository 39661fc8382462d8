"""CTranslate2 (faster-whisper) Whisper models: read (`reader`), written (`export`) and decoded
from the PyTorch encoder's outputs (`generator`)."""

from whisper_head.ct2.export import ct2_cache, export_ct2, weights_digest
from whisper_head.ct2.generator import CT2Generator
from whisper_head.ct2.reader import (
    FORMAT_VERSION,
    SPEC_NAME,
    ct2_config,
    ct2_to_transformers,
    parse_ct2,
    read_ct2,
    read_ct2_config,
)

__all__ = [
    "FORMAT_VERSION",
    "SPEC_NAME",
    "CT2Generator",
    "ct2_cache",
    "ct2_config",
    "ct2_to_transformers",
    "export_ct2",
    "parse_ct2",
    "read_ct2",
    "read_ct2_config",
    "weights_digest",
]
