"""Widget views (anywidget) and the live loop. Views receive numpy arrays; they never run a model."""

from .attention import AttentionView
from .prompt import PromptBox
from .runner import LatestOnlyRunner

__all__ = ["AttentionView", "PromptBox", "LatestOnlyRunner"]
