"""mechviz: live, linked Jupyter widgets for mechanistic interpretability of language models.

>>> import mechviz
>>> lab = mechviz.Lab.default()       # the bundled offline model
>>> lab.show(lab.attention())         # doctest: +SKIP
"""

from . import zoo
from .compare import Compare
from .lab import Lab, pin_threads
from .models import Run, SITES, wrap
from .steering import Steering
from .widgets import (AttentionView, DashboardView, FeatureView, GraphView, HeadGridView, LogitLensView, Panel,
                      PatchGridView, PromptBox, SteeringView)

__version__ = "0.1.0"
__all__ = ["Lab", "Compare", "Run", "SITES", "wrap", "pin_threads", "Steering", "AttentionView", "LogitLensView", "FeatureView",
           "SteeringView", "DashboardView", "GraphView", "HeadGridView", "PatchGridView", "PromptBox", "Panel", "__version__"]
