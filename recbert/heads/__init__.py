"""Task heads on a pretrained sequence encoder: classification, CTR, fine-tuning."""

from recbert.heads.base import EncoderHeadModel, load_head
from recbert.heads.classification import HeadConfig, SequenceClassifier, check_labels
from recbert.heads.ctr import CTRConfig, CTRHead, CTRModel
from recbert.heads.finetune import FinetuneConfig, HeadObjective, finetune
from recbert.model.checkpoint import check_compatible, load_encoder
from recbert.heads.losses import binary_focal_loss, multiclass_focal_loss

__all__ = [
    "CTRConfig", "CTRHead", "CTRModel", "EncoderHeadModel", "FinetuneConfig", "HeadConfig", "HeadObjective",
    "SequenceClassifier", "binary_focal_loss", "check_compatible", "check_labels",
    "finetune", "load_encoder", "load_head", "multiclass_focal_loss",
]
