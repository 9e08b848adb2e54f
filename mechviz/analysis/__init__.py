"""Pure analysis functions: a :class:`~mechviz.models.Run` (or model + prompts) in, numpy arrays out.

Modules: :mod:`.attention`, :mod:`.logit_lens`, :mod:`.dla` (direct logit attribution), :mod:`.heads`
(head detectors), :mod:`.features`, :mod:`.dashboards` (feature dashboards over a corpus), :mod:`.generation`
(steered text, strength sweeps), :mod:`.figures` (matplotlib), :mod:`.patching` (activation and attribution
patching), :mod:`.ablation`, :mod:`.path_patching`, :mod:`.causal_tracing` (ROME), :mod:`.graph` (attribution
graphs over transcoders) and :mod:`.graph_edit` (interventions on them).
"""

from . import (ablation, attention, causal_tracing, dashboards, dla, features, figures, generation, graph, graph_edit,
               heads, logit_lens, path_patching, patching, view_figures)
from .attention import attention_patterns, induction_scores
from .dashboards import Dashboards, feature_dashboards
from .features import (FeatureSummary, feature_activations, feature_logit_effects, feature_summary,
                       next_token_probs, steer, steering_edit, top_features)
from .graph import Graph, GraphCancelled, attribution_graph, graph_scores, influence, prune
from .graph_edit import Intervention, edge_heads, intervene
from .logit_lens import LogitLens

__all__ = ["ablation", "attention", "causal_tracing", "dashboards", "dla", "heads", "features", "generation", "figures",
           "logit_lens", "patching", "path_patching", "attention_patterns", "induction_scores",
           "LogitLens", "feature_activations", "top_features", "feature_logit_effects", "steer",
           "steering_edit", "next_token_probs", "FeatureSummary", "feature_summary", "feature_dashboards",
           "Dashboards", "graph", "graph_edit", "Graph", "GraphCancelled", "attribution_graph", "graph_scores",
           "influence", "prune", "Intervention", "edge_heads", "intervene", "view_figures"]
