"""nnsight models (``nnsight.LanguageModel`` / ``TransformersModel``): every site read and edited through nnsight
traces, locally or on NDIF (``remote=True``).

The envoy tree mirrors the HuggingFace module tree, so the module paths come from the same per-architecture map
(:class:`~.archs.ArchSpec`) as :class:`~.hf.HFAdapter`'s; the adapter derives from it and replaces only how a pass
reads and writes sites: inside ``model.trace(...)``, reading each module's ``.input`` / ``.output`` in the order the
forward computes them (nnsight refuses out-of-order reads). With weights loaded locally, the methods that take the
weights themselves (the patching engine, gradients, the unembedding the logit lens applies) run on the same
modules as the HF adapter's; a remote model (weights on the meta device here) gets its views through reductions
evaluated inside the trace (:mod:`.reductions`), so only small tensors are downloaded.

>>> import nnsight, mechviz.zoo                                  # doctest: +SKIP
>>> lm = nnsight.LanguageModel(*mechviz.zoo.load_default_model())  # doctest: +SKIP
>>> mechviz.wrap(lm).run("Hello", capture=["resid_post.0"])     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools

import torch

from .base import Aborted, UnsupportedModelError
from .hf import HFAdapter
from .hooks import first as _first
from .remote import explain_errors
from .sites import Site, SiteError, parse_sites

__all__ = ["NNsightAdapter", "is_nnsight_model"]


def is_nnsight_model(model) -> bool:
    """``model`` is an nnsight envoy (``NNsight``, ``LanguageModel``, ``TransformersModel``), told by its classes'
    module names so that telling the backends apart never imports nnsight."""
    return any((cls.__module__ or "").split(".")[0] == "nnsight" for cls in type(model).__mro__)


def _hide_weights(module):
    """``module`` as :class:`~.hf.HFAdapter`'s constructor sees it, with its meta-device weights hidden (a remote
    model is built on the meta device: its weights live on the server)."""
    class Weights:
        forward = type(module).forward

        def __getattr__(self, name):
            return getattr(module, name)

        def parameters(self):
            return iter(())

        def eval(self):
            return module.eval()
    return Weights()


class NNsightAdapter(HFAdapter):
    """Adapter over an nnsight envoy of a HuggingFace causal LM.

    ``remote=True`` runs every trace on NDIF (the API key from nnsight's own configuration: ``NDIF_API_KEY`` or
    ``nnsight.login()``; ``remote="local"``: nnsight's serialising local simulation of the remote path); errors are turned into messages that say what to do
    (:func:`~.remote.explain_errors`). ``bytes_received`` counts the bytes of every tensor a trace saved, by
    the view (``tag``) that asked for it. ``reduce_views``: the logit lens and attention views of a Lab take
    their data from reductions inside a trace (:mod:`.reductions`) rather than from the Lab's shared pass.
    """

    #: the logit lens and attention views take their data from reductions inside a trace (set in __init__)
    reduce_views = True

    def __init__(self, model, tokenizer=None, name: str | None = None, remote: bool | str = False,
                 reduce_views: bool = True):
        module = getattr(model, "_module", None)
        if module is None or not hasattr(getattr(module, "config", None), "model_type"):
            raise UnsupportedModelError(f"cannot wrap a {type(model).__name__}: mechviz's nnsight backend takes an "
                                        "nnsight LanguageModel / TransformersModel of a HuggingFace causal LM")
        self.lm = model
        self.meta = any(p.device.type == "meta" for p in module.parameters())
        # the constructor switches the model's config to eager attention (the only implementation with weights);
        # nnsight sends that config's choice with every remote request, so the server switches too
        HFAdapter.__init__(self, _hide_weights(module) if self.meta else module,
                           tokenizer=tokenizer or getattr(model, "tokenizer", None), name=name)
        self.remote, self.reduce_views = remote, bool(reduce_views)
        if self.remote and not hasattr(model, "to_model_key"):
            raise UnsupportedModelError(f"a {type(model).__name__} cannot run remotely: NDIF runs the models of "
                                        "nnsight.LanguageModel(repo_id) / TransformersModel(repo_id)")
        if self.meta and self.remote in (False, "local"):
            raise UnsupportedModelError(
                f"{self.name}'s weights are on the meta device (nnsight loads them on the first local trace, "
                "outside mechviz's control): pass dispatch=True to LanguageModel(...) to load them here, or "
                "mechviz.Lab(mechviz.wrap(model, remote=True)) to run it on NDIF")
        if self.remote:
            import nnsight

            # NDIF has no mechviz installed: the code a trace calls (reads, reductions) ships by value
            nnsight.register("mechviz")
            # and the adapter travels with it: tag what the server resolves from its own model (every module, the
            # interleaver, the tokenizer) as nnsight's envoys tag it when pickled, so that the adapter's own
            # references to them are sent as references too, never as weights, whatever is pickled first
            for pid, obj in model._remoteable_persistent_objects().items():
                if hasattr(obj, "__dict__"):
                    obj._persistent_id = pid
        self.bytes_received: dict[str, int] = {}
        self._order: dict | None = None
        if self.meta:  # the weights are on the server: what computes with them here says so
            for method in _WEIGHT_METHODS:
                setattr(self, method, functools.partial(_needs_weights, self.name, method))

    # -- nnsight plumbing ---------------------------------------------------------------------
    def envoy(self, module):
        """The envoy of ``module`` (a module of the wrapped model)."""
        return self.lm.interleaver.envoys[id(module)]

    def trace_kw(self) -> dict:
        """The keywords of every ``model.trace`` this adapter opens (``remote=True`` on NDIF). Callers write
        ``with explain_errors(adapter): with adapter.lm.trace(x, **adapter.trace_kw()):`` themselves: nnsight
        captures the source of the ``with`` block it is entered from, so the trace cannot be opened here."""
        return {"remote": self.remote} if self.remote else {}

    def count(self, tag: str, saved) -> None:
        """Add the bytes of every tensor in ``saved`` (nested dicts, lists) to ``bytes_received[tag]``."""
        n = sum(t.numel() * t.element_size() for t in _tensors(saved))
        self.bytes_received[tag] = self.bytes_received.get(tag, 0) + n

    def order(self) -> dict:
        """``{(id(module), "pre" | "post"): rank}``: when the forward reads each module's input and output, found
        once by a forward with hooks on every module (on meta tensors for a remote model)."""
        if self._order is None:
            events, handles = {}, []

            def note(mod, kind):
                events.setdefault((id(mod), kind), len(events))
            for m in self.model.modules():
                handles.append(m.register_forward_pre_hook(lambda mod, _a: note(mod, "pre")))
                handles.append(m.register_forward_hook(lambda mod, _a, _o: note(mod, "post")))
            try:
                with torch.inference_mode(), _fake_tensors(self.meta):
                    ids = torch.zeros(1, 2, dtype=torch.long, device=self._device())
                    self.model(input_ids=ids, use_cache=False)
            finally:
                for h in handles:
                    h.remove()
            self._order = events
        return self._order

    def _rank(self, module, kind: str) -> int:
        key = (id(module), "pre" if kind == "pre" else "post")
        try:
            return self.order()[key]
        except KeyError:
            raise SiteError(f"{self._where(module)} does not run in this model's forward") from None

    # -- one pass over one prompt -------------------------------------------------------------
    def plan(self, sites: list[Site], edits: dict, abort=None):
        """The reads of one pass, in forward order: ``[(module, kind, [(site, view), ...])]``, plus the sites
        derived after it (``resid_mid`` of a parallel block)."""
        groups, derived = self._reads(sites, edits)
        if abort is not None:  # poll before each block: an empty read of its input
            for block in self.blocks:
                groups.setdefault((id(block), "pre"), [block, "pre", []])
        return sorted(groups.values(), key=lambda g: self._rank(g[0], g[1])), derived

    def read(self, plan, edits: dict, abort=None) -> dict:
        """Inside a trace: every read of ``plan``, edits applied, as ``{site: tensor [B, T, ...]}`` (batch kept,
        copies on the device the site lives on)."""
        store = {}
        for module, kind, taps in plan:
            if abort is not None and module in self.blocks and abort():
                raise Aborted()
            if not taps:
                continue
            env = self.envoy(module)
            raw = env.input if kind == "pre" else (env.output if kind == "post_all" else _first(env.output))
            for site, view in taps:
                x = view(raw)
                if x is None:
                    raise SiteError(f"site {site}: the attention module returned no weights (a remote model "
                                    "needs eager attention on the server)")
                if site in edits:
                    x[...] = edits[site](x[0].clone()).reshape(x.shape[1:]).to(x.dtype)[None]
                store[str(site)] = x.detach().clone()
        return store

    def _forward(self, ids, sites: list[Site], abort, edits=None):
        edits = edits or {}
        plan, derived = self.plan(sites, edits, abort)
        with explain_errors(self), self.lm.trace(ids[None], **self.trace_kw()):
            store = self.read(plan, edits, abort)
            logits = self.lm.output.logits[0].detach().float()
            saved = _save({"store": store, "logits": logits})
        self.count("run", saved)
        store = {k: v[0].float().cpu() for k, v in saved["store"].items()}
        for s in derived:
            store[str(s)] = store[f"resid_pre.{s.layer}"] + store[f"attn_out.{s.layer}"]
        return saved["logits"].cpu(), {str(s): store[str(s)] for s in sites}

    def capture_batch(self, ids, site):
        (s,) = parse_sites(site, self.n_layers)
        ids = torch.as_tensor(ids).long()
        if (s.name == "resid_mid" and self.parallel) or s.name in ("router", "mlp_in") or ids.ndim != 2:
            return super(HFAdapter, self).capture_batch(ids, site)
        plan, _ = self.plan([s], {})
        with torch.inference_mode(), explain_errors(self), self.lm.trace(ids.to(self._device()), **self.trace_kw()) \
                as tracer:
            saved = _save(self.read(plan, {}))
            tracer.stop()  # the site is computed: later blocks never run
        self.count("capture_batch", saved)
        return saved[str(s)]

    def _device(self):
        if self.meta:
            return torch.device("cpu")
        return super()._device()


#: what computes with the weights on this machine (a remote adapter refuses these)
_WEIGHT_METHODS = frozenset({"final_norm", "unembed", "unembed_linear", "unembed_tokens", "logits_of", "logits_into",
                             "patch_base", "forward_from", "grad_run", "attn_out_of_z", "finish_block", "pos_embed"})


def _needs_weights(model: str, method: str, *args, **kwargs):
    raise UnsupportedModelError(
        f"{method} needs {model}'s weights here, and a remote model has them on NDIF only: its logit lens, "
        "attention, SAE top features (reductions.SAETop) and patching grids (activation_patching) are computed "
        "inside traces; load the model locally (dispatch=True) for the rest")


def _fake_tensors(on: bool):
    """Fake tensors (shapes only) for a forward of a meta-device model, as nnsight's ``scan`` runs one."""
    if not on:
        return contextlib.nullcontext()
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    return FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv(assume_static_by_default=True))


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)


def _save(x):
    """Mark ``x`` to leave the trace (``nnsight.save``)."""
    import nnsight

    return nnsight.save(x)
