"""Widget views (anywidget) and the live loop. Views receive numpy arrays; they never run a model."""

from .attention import AttentionView
from .base import Feed, Pass, View
from .dashboard import DashboardView
from .features import FeatureView
from .generation import SteeringView
from .graph import GraphView
from .head_grid import HeadGridView
from .logit_lens import LogitLensView
from .panel import Panel
from .patching import PatchGridView, PatchingSession
from .prompt import PromptBox
from .runner import LatestOnlyRunner, ModelLock
from .selection import Selection

__all__ = ["View", "Feed", "Pass", "AttentionView", "DashboardView", "GraphView", "LogitLensView", "FeatureView", "SteeringView",
           "HeadGridView", "PatchGridView", "PatchingSession", "PromptBox", "Selection", "LatestOnlyRunner", "ModelLock", "Panel"]
