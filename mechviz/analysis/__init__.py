"""Pure analysis functions: a :class:`~mechviz.models.Run` (or model + prompts) in, numpy arrays out."""

from .attention import attention_patterns, induction_scores

__all__ = ["attention_patterns", "induction_scores"]
