"""Pure analysis functions: a :class:`~mechviz.models.Run` (or model + prompts) in, numpy arrays out."""

from .attention import attention_patterns, induction_scores
from .features import (feature_activations, feature_logit_effects, next_token_probs, steer, steering_edit,
                       top_features)
from .features import needs as feature_needs
from .logit_lens import LogitLens, logit_lens
from .logit_lens import needs as logit_lens_needs

__all__ = ["attention_patterns", "induction_scores", "logit_lens", "LogitLens", "logit_lens_needs",
           "feature_activations", "top_features", "feature_logit_effects", "steer", "steering_edit",
           "next_token_probs", "feature_needs"]
