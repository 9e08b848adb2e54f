"""Sparse autoencoders: a small explicit :class:`SAE` (ReLU, TopK, JumpReLU encoders) and loaders for
SAELens folders, ``sae_lens`` objects and plain state dicts.

>>> from mechviz.saes import load_sae, check_sae_fits        # doctest: +SKIP
>>> sae = load_sae("path/to/sae_folder")                      # doctest: +SKIP
>>> check_sae_fits(sae, adapter)                              # doctest: +SKIP
'resid_post.1'
"""

from .load import check_sae_fits, hook_to_site, load_sae, sae_from_state_dict, site_width
from .sae import ARCHITECTURES, SAE, SAEError

__all__ = ["SAE", "SAEError", "ARCHITECTURES", "load_sae", "sae_from_state_dict", "check_sae_fits",
           "hook_to_site", "site_width"]
