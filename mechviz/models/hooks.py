"""The hooks of one pass over a HuggingFace model, and the check that each fired exactly once."""

from __future__ import annotations

import torch


def first(x):
    """A module's first output (HF attention and some MLPs return tuples)."""
    return x[0] if isinstance(x, (tuple, list)) else x


class HookError(RuntimeError):
    """A hook the map placed did not fire exactly once in a pass: the map does not match the model."""


class Hooks:
    """The hooks of one pass. :meth:`add` registers ``fn(raw) -> replacement or None`` on a module's
    first input (``"pre"``), first output (``"post"``) or whole output (``"post_all"``, read-only);
    every hook is removed on exit. A hook given a name must fire exactly once, or :meth:`check` raises
    :class:`HookError` naming it."""

    def __init__(self):
        self.handles, self.named = [], []      # named: [name, module path, calls]

    def add(self, module, kind: str, fn, name: str | None = None, where: str = ""):
        entry = [name, where, 0]
        if name is not None:
            self.named.append(entry)

        def call(raw):
            entry[2] += 1
            return fn(raw)
        if kind == "pre":
            def pre(_m, args, kwargs):
                key = None if args else next((k for k in ("hidden_states", "input", "x") if k in kwargs),
                                             next(iter(kwargs)))
                new = call(args[0] if args else kwargs[key])
                if new is None:
                    return None
                return ((new,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, key: new})
            self.handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        elif kind == "post":
            def post(_m, _a, out):
                new = call(first(out))
                if new is None:
                    return None
                return (new,) + tuple(out[1:]) if isinstance(out, (tuple, list)) else new
            self.handles.append(module.register_forward_hook(post))
        else:
            self.handles.append(module.register_forward_hook(lambda _m, _a, out: call(out) and None))

    def check(self):
        bad = [f"{name} (hook on {where or 'the model'} fired {n} times)" for name, where, n in self.named if n != 1]
        if bad:
            raise HookError(f"not captured: {'; '.join(bad)}. The architecture map does not match this model's "
                            "forward (a module it names was not called, or called more than once), so no value "
                            "is returned rather than a wrong one.")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


class Skip(torch.nn.Module):
    """Stands in for a block before the one a resumed pass starts at: passes the stream on untouched
    (the first real block's hook replaces it). The block list keeps its length, so a model that looks
    a layer's type up by its index (sliding-window masks, Gemma 3's per-type RoPE) still finds it."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


