"""Sparse dictionaries: a small explicit :class:`SAE` (ReLU, TopK, AbsTopK, JumpReLU and gated encoders;
SAEs, transcoders and skip transcoders) and loaders for SAELens folders, ``sae_lens`` objects, SAELens
releases from a local copy (never the network) and plain state dicts.

>>> from mechviz.saes import load_sae, check_sae_fits        # doctest: +SKIP
>>> sae = load_sae("path/to/sae_folder")                      # doctest: +SKIP
>>> check_sae_fits(sae, adapter)                              # doctest: +SKIP
'resid_post.1'
"""

from .circuit_tracer import load_circuit_tracer_transcoders, mlp_norm_weights
from .formats import hook_to_site, sae_from_state_dict
from .load import check_sae_fits, load_sae, site_width
from .sae import ARCHITECTURES, KINDS, SAE, SAEError

__all__ = ["SAE", "SAEError", "ARCHITECTURES", "KINDS", "load_sae", "sae_from_state_dict", "check_sae_fits",
           "hook_to_site", "site_width", "load_circuit_tracer_transcoders",
           "mlp_norm_weights"]
