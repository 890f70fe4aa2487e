"""Models: the SCM dual-head monitor, the encoder baseline classifier and the streaming runtime.

Importing this package registers both model types with ``AutoConfig``/``AutoModel``, so checkpoints load through
the auto classes without ``trust_remote_code``.
"""

from model.modeling_qwen4dual_2CE_w_logic import LABEL_NAMES, SCMConfig, SCMModel, SCMOutput
from model.ModernBertForSeqCLF import (
    EncoderClassifierConfig,
    EncoderClassifierOutput,
    EncoderForSequenceClassification,
)

__all__ = [
    "LABEL_NAMES",
    "SCMConfig",
    "SCMModel",
    "SCMOutput",
    "EncoderClassifierConfig",
    "EncoderClassifierOutput",
    "EncoderForSequenceClassification",
]
