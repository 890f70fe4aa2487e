"""Models: the SCM dual-head monitor and the encoder baseline classifier, both built around an ``AutoModel`` backbone
(``model/backbone.py``); beside them the lexical floor (``model/lexical.py``), the offline default assets
(``model/assets.py``) and the checkpoint converter (``model/convert_checkpoint.py``). The streaming runtime that
serves these models is ``serve/``.

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
