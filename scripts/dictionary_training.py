"""Shared pieces for training and measuring the bundled model's dictionaries (SAEs, transcoders).

Imported by ``scripts/train_default_model.py`` (its one SAE), ``scripts/train_default_dictionaries.py``
(an SAE and a transcoder per layer) and ``scripts/measure_default_model.py`` (their metrics).

* :func:`sample_windows`: ``[BOS] + 255`` token windows at random offsets of a token stream;
* :func:`collect_activations`: one batched forward pass of the HF GPT-2 with hooks, returning
  ``resid_post.L`` (block L's output), ``mlp_in.L`` (the MLP's input = ``ln_2``'s output, affine
  included) and ``mlp_out.L`` (the MLP's output added to the residual stream), BOS excluded;
* :class:`TopKTrainer` + :func:`train_topk`: a TopK dictionary (SAE when ``d_out`` is None, else a
  transcoder) trained with Adam + AuxK (Gao et al. 2024), parametrised like sae_lens' ``TopKSAE`` /
  ``Transcoder``;
* :func:`topk_to_jumprelu`: a TopK transcoder as a JumpReLU one (sae_lens 6 has no TopK transcoder):
  per-feature thresholds that keep each feature's firing rate, decoder refitted, decoder rows unit norm;
* :func:`dictionary_stats`, :func:`spliced_losses`: explained variance / L0 / dead fraction, and the
  LM's loss with the reconstruction spliced in.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
import torch.nn.functional as F


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# =============================================================================== data
def sample_windows(stream: np.ndarray, n_tokens: int, T: int, bos: int, seed: int) -> torch.Tensor:
    """``n_tokens // (T-1)`` windows ``[BOS] + stream[o : o+T-1]`` at offsets drawn with
    ``np.random.default_rng([seed, 999])`` (the draw ``train_default_model.train_sae`` always made)."""
    n_seq = n_tokens // (T - 1)
    rng = np.random.default_rng([seed, 999])
    offs = rng.integers(0, len(stream) - T, size=n_seq)
    x = np.empty((n_seq, T), dtype=np.int64)
    x[:, 0] = bos
    for i, o in enumerate(offs):
        x[i, 1:] = stream[o : o + T - 1]
    return torch.from_numpy(x)


def _block_out(out):
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def collect_activations(model, tokens: torch.Tensor, sites, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Activations of a HF ``GPT2LMHeadModel`` at ``sites`` (``resid_post.L``, ``mlp_in.L``,
    ``mlp_out.L``), BOS position excluded, flattened to ``(n * (T-1), d_model)`` float32 on the CPU.

    ``resid_post.L`` is block L's output (mechviz's ``resid_post.L``, TransformerLens'
    ``blocks.L.hook_resid_post`` on an unfolded model); ``mlp_in.L`` is what block L's MLP reads:
    the output of ``ln_2`` (``(x - mean) / sqrt(var + eps) * ln_2.weight + ln_2.bias`` of ``resid_mid.L``;
    TransformerLens 4's ``blocks.L.mlp.hook_in``); ``mlp_out.L`` is the MLP's output (mechviz's
    ``mlp_out.L``, TransformerLens' ``blocks.L.hook_mlp_out``)."""
    blocks = model.transformer.h
    store: dict[str, list] = {s: [] for s in sites}
    handles = []
    for s in sites:
        name, layer = s.split(".")
        L = int(layer)
        if name == "resid_post":
            handles.append(blocks[L].register_forward_hook(
                lambda m, a, o, s=s: store[s].append(_block_out(o)[:, 1:].float().cpu())))
        elif name == "mlp_in":
            handles.append(blocks[L].mlp.register_forward_hook(
                lambda m, a, o, s=s: store[s].append(a[0][:, 1:].float().cpu())))
        elif name == "mlp_out":
            handles.append(blocks[L].mlp.register_forward_hook(
                lambda m, a, o, s=s: store[s].append(_block_out(o)[:, 1:].float().cpu())))
        else:
            raise ValueError(f"collect_activations: unsupported site {s!r}")
    dev = next(model.parameters()).device
    try:
        for i in range(0, tokens.shape[0], batch_size):
            model(tokens[i : i + batch_size].to(dev))
    finally:
        for h in handles:
            h.remove()
    return {s: torch.cat(v).reshape(-1, v[0].shape[-1]) for s, v in store.items()}


# =============================================================================== TopK training
class TopKTrainer(torch.nn.Module):
    """A TopK dictionary with sae_lens' parametrisation: an SAE (``d_out=None``: ``TopKSAE`` with
    ``apply_b_dec_to_input=True``, ``encode(x) = topk(relu((x - b_dec) @ W_enc + b_enc))``) or a
    transcoder (``d_out`` given: ``encode(x) = topk(relu(x @ W_enc + b_enc))``, decoded to ``d_out``)."""

    def __init__(self, d_in, d_sae, k, init_bdec, d_out=None):
        super().__init__()
        self.transcoder = d_out is not None
        d_out = d_in if d_out is None else d_out
        W = torch.randn(d_in, d_sae)
        W = W / W.norm(dim=0, keepdim=True)
        if d_out == d_in:
            Wd = W.T.clone()
        else:
            Wd = torch.randn(d_sae, d_out)
            Wd = Wd / Wd.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(Wd)
        self.W_enc = torch.nn.Parameter(W.clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(init_bdec.clone())
        self.k = k

    def pre(self, x):
        return (x if self.transcoder else x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x):
        pre = self.pre(x)
        v, i = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, i, v.relu())

    def decode(self, f):
        return f @ self.W_dec + self.b_dec


def train_topk(dic: TopKTrainer, x: torch.Tensor, y: torch.Tensor | None, *, lr: float, epochs: int,
               batch: int, aux: float, dead_steps: int, name: str = "sae") -> TopKTrainer:
    """Train ``dic`` to map ``x`` to ``y`` (``y=None``: reconstruct ``x``) with Adam on the MSE
    normalised by the target's variance, plus the AuxK loss (the top ``2k`` latents among those that
    have not fired for ``dead_steps`` steps predict the residual), linear LR decay over the last 20%,
    decoder rows renormalised to unit norm after every step. ``x``/``y`` are already shuffled.

    A transcoder starts from data: latent i's encoder is the centred input of a random training token
    and its decoder that token's centred target, the encoder scaled so the first outputs are about the
    target's size and ``b_enc`` centring the input (with random directions half of the layer-1
    transcoder's latents never fired: 64% dead on held-out after 194 steps, 22% with this init)."""
    y = x if y is None else y
    if dic.transcoder:  # data init, encoder scaled so the first outputs are about the target's size, centred
        with torch.no_grad():
            # every latent starts as one training token: encoder = its centred input, decoder = its centred
            # target (random directions in two unrelated spaces leave most latents dead)
            xm, ym = x[:65536].mean(0), y[:65536].mean(0)
            pick = torch.randint(0, min(65536, x.shape[0]), (dic.W_enc.shape[1],))
            xe, yd = x[pick] - xm, y[pick] - ym
            dic.W_enc.copy_((xe / xe.norm(dim=1, keepdim=True).clamp_min(1e-8)).T)
            dic.W_dec.copy_(yd / yd.norm(dim=1, keepdim=True).clamp_min(1e-8))
            dic.b_enc.zero_()
            f = dic.encode(x[:4096] - xm)
            s = (y[:4096] - dic.b_dec).norm(dim=-1).mean() / (f @ dic.W_dec).norm(dim=-1).mean().clamp_min(1e-8)
            dic.W_enc.mul_(s)
            # the input (ln_2's output) is far from centred: without this, the latents whose encoder
            # happens to point along its mean win every top-k and most others never fire
            dic.b_enc.copy_(-(xm @ dic.W_enc))
    opt = torch.optim.Adam(dic.parameters(), lr=lr, betas=(0.9, 0.999))
    N = x.shape[0]
    steps = epochs * (N // batch)
    d_sae = dic.W_enc.shape[1]
    last_fire = torch.zeros(d_sae, dtype=torch.long, device=x.device)
    var = ((y - y.mean(0)) ** 2).sum(-1).mean()
    for s in range(steps):
        cur = lr * min(1.0, (steps - s) / (0.2 * steps))  # linear decay over last 20%
        for g in opt.param_groups:
            g["lr"] = cur
        j = (s * batch) % (N - batch + 1)
        xb, yb = x[j : j + batch], y[j : j + batch]
        pre = dic.pre(xb)
        v, idx = pre.topk(dic.k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, idx, v.relu())
        yh = f @ dic.W_dec + dic.b_dec
        mse = ((yh - yb) ** 2).sum(-1).mean()
        loss = mse / var
        # AuxK loss (Gao et al. 2024) to revive dead latents
        fired = (f > 0).any(0)
        last_fire = torch.where(fired, torch.zeros_like(last_fire), last_fire + 1)
        dead = last_fire > dead_steps
        if dead.any():
            kaux = min(int(dead.sum()), 2 * dic.k)
            pre_d = pre.masked_fill(~dead, -1e9)
            va, ia = pre_d.topk(kaux, dim=-1)
            fa = torch.zeros_like(pre).scatter(-1, ia, va.relu())
            err = (yb - yh).detach()
            loss = loss + aux * ((fa @ dic.W_dec - err) ** 2).sum(-1).mean() / var
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            dic.W_dec.data /= dic.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-8)
        if s % 500 == 0:
            log(f"{name} step {s}/{steps} fvu {(mse / var).item():.4f} dead {int(dead.sum())}")
    return dic


@torch.no_grad()
def topk_to_jumprelu(dic: TopKTrainer, x: torch.Tensor, y: torch.Tensor, *, n_calib: int = 50_000,
                     lr: float = 1e-3, epochs: int = 1, batch: int = 1024, name: str = "tc") -> dict:
    """A TopK transcoder as JumpReLU weights ``{W_enc, b_enc, W_dec, b_dec, threshold}``
    (``encode(x) = relu(pre) * (pre > threshold)``, ``pre = x @ W_enc + b_enc``):

    1. every feature's threshold is the pre-activation quantile that makes it fire as often (on the
       first ``n_calib`` training activations) as it does under TopK (>= 0; a feature TopK never picks
       gets a threshold above its largest pre-activation), so the mean L0 stays about ``k``;
    2. the decoder (``W_dec``, ``b_dec``) is refitted with Adam to the JumpReLU codes, encoder fixed;
    3. decoder rows are scaled to unit norm, the scale folded into ``W_enc``, ``b_enc``, ``threshold``
       (the output is unchanged)."""
    xc = x[:n_calib]
    pre = dic.pre(xc)
    v, i = pre.topk(dic.k, dim=-1)
    on = torch.zeros_like(pre, dtype=torch.bool).scatter(-1, i, v > 0)
    n_on = on.sum(0)  # how many of the calibration rows each feature fires on under TopK
    srt = pre.sort(dim=0, descending=True).values  # (n_calib, d_sae)
    idx = n_on.clamp(max=xc.shape[0] - 1)
    # between the n_on-th and the (n_on+1)-th largest: fires on exactly n_on calibration rows
    hi = srt.gather(0, (idx - 1).clamp_min(0)[None])[0]
    lo = srt.gather(0, idx[None])[0]
    thr = torch.where(n_on > 0, (hi + lo) / 2, srt[0] + 1.0).clamp_min(0.0)
    del srt, pre
    W_enc, b_enc = dic.W_enc.detach().clone(), dic.b_enc.detach().clone()

    def codes(xb):
        p = xb @ W_enc + b_enc
        return p.relu() * (p > thr)

    W_dec = dic.W_dec.detach().clone().requires_grad_(True)
    b_dec = dic.b_dec.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([W_dec, b_dec], lr=lr)
    var = ((y - y.mean(0)) ** 2).sum(-1).mean()
    N = x.shape[0]
    steps = epochs * (N // batch)
    for s in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (steps - s) / (0.3 * steps))
        j = (s * batch) % (N - batch + 1)
        f = codes(x[j : j + batch])
        with torch.enable_grad():
            loss = ((f @ W_dec + b_dec - y[j : j + batch]) ** 2).sum(-1).mean() / var
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        if s % 200 == 0:
            log(f"{name} jumprelu refit step {s}/{steps} fvu {loss.item():.4f}")
    W_dec, b_dec = W_dec.detach(), b_dec.detach()
    norm = W_dec.norm(dim=1).clamp_min(1e-8)
    return {"W_enc": W_enc * norm[None], "b_enc": b_enc * norm, "W_dec": W_dec / norm[:, None],
            "b_dec": b_dec, "threshold": thr * norm}


# =============================================================================== measuring
@torch.no_grad()
def dictionary_stats(dic, x: torch.Tensor, y: torch.Tensor | None = None, batch_size: int = 4096) -> dict:
    """Explained variance of the target (``y``, else ``x``), mean L0, dead fraction (never > 0 on
    these rows) of any object with ``encode``/``decode`` (an sae_lens SAE or transcoder).
    EV = 1 - sum ||y - y_hat||^2 / sum ||y - mean(y)||^2."""
    x = x.reshape(-1, x.shape[-1]).float()
    y = x if y is None else y.reshape(-1, y.shape[-1]).float()
    mu = y.mean(0, keepdim=True)
    sse = sst = l0 = 0.0
    fired = None
    for i in range(0, x.shape[0], batch_size):
        f = dic.encode(x[i : i + batch_size])
        yh = dic.decode(f)
        yb = y[i : i + batch_size]
        sse += ((yb - yh) ** 2).sum().item()
        sst += ((yb - mu) ** 2).sum().item()
        on = f > 0
        l0 += on.sum().item()
        fired = on.any(0) if fired is None else fired | on.any(0)
    n = x.shape[0]
    return {"explained_variance": 1.0 - sse / sst, "mse": sse / (n * y.shape[1]), "l0": l0 / n,
            "dead_fraction": 1.0 - fired.float().mean().item(), "n_tokens": n}


@contextlib.contextmanager
def splice(model, site: str, fn):
    """Inside the block, ``site`` (``resid_post.L``: block L's output; ``mlp.L``: block L's MLP, whose
    input is ``mlp_in.L``) is replaced by ``fn(input)`` at every position but BOS (position 0)."""
    name, layer = site.split(".")
    blk = model.transformer.h[int(layer)]

    def keep_bos(orig, new):
        return torch.cat([orig[:, :1], new[:, 1:].to(orig.dtype)], dim=1)

    if name == "resid_post":
        def hook(m, a, o):
            h = _block_out(o)
            new = keep_bos(h, fn(h))
            return (new, *o[1:]) if isinstance(o, tuple) else new
        handle = blk.register_forward_hook(hook)
    elif name == "mlp":
        def hook(m, a, o):
            return keep_bos(o, fn(a[0]))
        handle = blk.mlp.register_forward_hook(hook)
    else:
        raise ValueError(site)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def spliced_losses(model, tokens: torch.Tensor, variants: dict, batch_size: int = 32) -> dict:
    """Mean next-token CE (nats; targets at positions 2.., i.e. predictions from every non-BOS
    position) of the clean model and of each ``variants[name] = (site, fn)`` splice, and each
    splice's mean KL(clean || spliced) over the same positions."""
    dev = next(model.parameters()).device
    ce = {"clean": 0.0, **{k: 0.0 for k in variants}}
    kl = {k: 0.0 for k in variants}
    n = 0
    for i in range(0, tokens.shape[0], batch_size):
        x = tokens[i : i + batch_size].to(dev)
        tgt = x[:, 2:]
        lp0 = model(x).logits[:, 1:-1].float().log_softmax(-1)
        ce["clean"] += -lp0.gather(-1, tgt[..., None]).sum().item()
        for k, (site, fn) in variants.items():
            with splice(model, site, fn):
                lp = model(x).logits[:, 1:-1].float().log_softmax(-1)
            ce[k] += -lp.gather(-1, tgt[..., None]).sum().item()
            kl[k] += (lp0.exp() * (lp0 - lp)).sum().item()
        n += tgt.numel()
    return {"ce": {k: v / n for k, v in ce.items()}, "kl": {k: v / n for k, v in kl.items()}, "n_tokens": n}
