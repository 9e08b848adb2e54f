"""Feature dashboards: mechviz's ``feature_dashboards`` vs SAEDashboard's ``SaeVisRunner`` on the same model,
SAE, corpus and features; wall time of each and whether the top activating contexts agree.

SAEDashboard (``sae-dashboard`` 0.8 on PyPI) pins ``transformer-lens<3`` and ``transformers<4.57``; mechviz
here runs with TransformerLens 3.9, so the two cannot share a process. This script (in mechviz's venv)

1. builds the shared inputs in ``--work``: a GPT-2-shaped TransformerLens ``HookedTransformer`` from a config
   with seeded random weights (parameters saved as safetensors + the config as JSON) using the bundled
   model's tokenizer (vocab 2,048); a seeded random ``StandardSAE`` (ReLU, unit-norm decoder rows so
   SAEDashboard's ``fold_W_dec_norm`` changes nothing; a negative encoder bias for a realistic density)
   saved with SAELens' ``save_model``; the corpus token ids (Python's pydoc topics packed into rows of
   ``--seq-len`` tokens starting with BOS) as ``.npy``;
2. runs SAEDashboard in its own venv (``--saedash-python``, default ``/work/venvs/saedash/bin/python``) on
   them: ``SaeVisRunner(SaeVisConfig(hook_point, features, ...)).run(sae, model, tokens)``, timed around
   ``run`` only, and writes each feature's top group (row, position);
3. runs ``feature_dashboards`` here on the same files, timed the same way, back to back on the same machine
   with torch pinned to the same threads (``--threads``, default 1).

Like with like: SAEDashboard's defaults (``top_acts_group_size`` set to ``--k``, 10 quantile groups of 5,
``buffer=(5, 5)``: top tokens are chosen only at positions 6..T-6, so that the context fits) and mechviz
with ``k``, 5 samples per interval, ``context=(5, 5)``, ``ignore_bos=False`` and
``ignore_positions`` = the positions SAEDashboard cannot choose. Both compute the activation histogram and
the logit table / histogram; SAEDashboard also computes per-token loss effects and neuron / encoder
correlations that mechviz does not (its tables). Top-k agreement: the same (row, position) set for each
feature; a difference counts as a tie only where the activations differ by < 1e-5.

    python bench/dashboards_vs_saedashboard.py                 # 4 layers, d 512, SAE 4096, 256 features
    python bench/dashboards_vs_saedashboard.py --rows 64 --features 64     # quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

HERE = Path(__file__).resolve()


def args_parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/mechviz_dash_bench")
    ap.add_argument("--saedash-python", default="/work/venvs/saedash/bin/python")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--sae-layer", type=int, default=1)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--features", type=int, default=256)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reuse-saedash", action="store_true", help="keep SAEDashboard's last result for this --work")
    ap.add_argument("--side", choices=["main", "saedash"], default="main", help=argparse.SUPPRESS)
    return ap


def tl_config(a, d_vocab: int) -> dict:
    return dict(n_layers=a.layers, d_model=a.d_model, n_heads=a.heads, d_head=a.d_model // a.heads,
                d_mlp=4 * a.d_model, n_ctx=a.seq_len, d_vocab=d_vocab, act_fn="gelu_new", normalization_type="LN",
                positional_embedding_type="standard", seed=0)


def build_model(cfg: dict, work: Path, tokenizer):
    """The HookedTransformer of ``cfg``; its parameters are read from ``work/model.safetensors`` (written by
    the main side on first build, so both sides hold identical weights)."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=tokenizer)
    path = work / "model.safetensors"
    if not path.exists():
        for p in model.parameters():  # GPT-2-like init scale, seeded
            if p.ndim > 1:
                torch.nn.init.normal_(p, std=0.02 if p.shape[-1] != cfg["d_vocab"] else 0.05)
        save_file({n: p.detach().contiguous() for n, p in model.named_parameters()}, str(path))
    missing, _ = model.load_state_dict(load_file(str(path)), strict=False)
    bad = [n for n in missing if n in dict(model.named_parameters())]
    if bad:
        raise RuntimeError(f"parameters missing from {path}: {bad}")
    return model.eval()


def tokenizer(work: Path):
    """The bundled model's tokenizer from a folder in ``work`` holding its ``tokenizer.json`` and a config naming
    ``PreTrainedTokenizerFast`` (the bundled folder names a transformers 5 class that SAEDashboard's
    transformers 4.56 lacks, and mechviz is not importable there); TransformerLens reloads it by path."""
    from transformers import AutoTokenizer

    folder = work / "tokenizer"
    if not folder.exists():
        folder.mkdir(parents=True)
        src = HERE.parents[1] / "mechviz" / "zoo" / "default" / "model" / "tokenizer.json"
        (folder / "tokenizer.json").write_bytes(src.read_bytes())
        eot = "<|endoftext|>"
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": eot, "eos_token": eot, "unk_token": eot,
            "pad_token": eot, "model_max_length": 1024}))
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def saedash_side(a, work: Path) -> None:
    """Runs in SAEDashboard's venv: time ``SaeVisRunner.run`` and write each feature's top group."""
    import numpy as np
    import torch
    from sae_dashboard.components_config import SequencesConfig
    from sae_dashboard.sae_vis_data import SaeVisConfig
    from sae_dashboard.sae_vis_runner import SaeVisRunner
    from sae_lens import SAE

    torch.set_num_threads(a.threads)
    cfg = json.loads((work / "config.json").read_text())
    model = build_model(cfg, work, tokenizer(work))
    sae = SAE.load_from_disk(str(work / "sae"), device="cpu")
    tokens = torch.from_numpy(np.load(work / "tokens.npy"))
    feats = list(range(a.features))
    vis = SaeVisConfig(hook_point=sae.cfg.metadata.hook_name, features=feats, minibatch_size_features=256,
                       minibatch_size_tokens=a.batch_size, device="cpu", verbose=False)
    for col in vis.feature_centric_layout.columns.values():
        for comp in col:
            if isinstance(comp, SequencesConfig):
                comp.top_acts_group_size = a.k
                comp.__post_init__()
    t0 = time.perf_counter()
    data = SaeVisRunner(vis).run(encoder=sae, model=model, tokens=tokens)
    wall = time.perf_counter() - t0
    top = np.full((len(feats), a.k, 2), -1, np.int64)
    for i, f in enumerate(feats):
        group = data.feature_data_dict[f].sequence_data.seq_group_data[0].seq_data
        for j, s in enumerate(group[:a.k]):
            top[i, j] = s.original_index, s.qualifying_token_index
    np.save(work / "saedash_top.npy", top)
    import sae_dashboard
    (work / "saedash.json").write_text(json.dumps({
        "wall_s": wall, "version": getattr(sae_dashboard, "__version__", "0.8.0"),
        "torch": torch.__version__, "threads": torch.get_num_threads()}))


def prepare(a, work: Path):
    """Write the shared model, SAE and corpus into ``work`` (once per configuration)."""
    import numpy as np
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig

    sys.path.insert(0, str(HERE.parents[1]))
    from mechviz.analysis.dashboard_cache import corpus_rows
    from mechviz.models import wrap

    work.mkdir(parents=True, exist_ok=True)
    tok = tokenizer(work)
    cfg = tl_config(a, len(tok))
    stamp = json.dumps({**cfg, "d_sae": a.d_sae, "rows": a.rows, "sae_layer": a.sae_layer}, sort_keys=True)
    if (work / "stamp.json").exists() and (work / "stamp.json").read_text() == stamp:
        return cfg
    for f in ("model.safetensors", "saedash.json", "saedash_top.npy"):
        (work / f).unlink(missing_ok=True)
    (work / "config.json").write_text(json.dumps(cfg))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = build_model(cfg, work, tok)
    adapter = wrap(model, name="bench")
    import pydoc_data.topics as pt

    rows = corpus_rows(adapter, [pt.topics[k] for k in sorted(pt.topics)], a.seq_len)[: a.rows]
    if len(rows) < a.rows:
        raise SystemExit(f"the corpus holds only {len(rows)} rows of {a.seq_len}")
    np.save(work / "tokens.npy", rows)
    hook = f"blocks.{a.sae_layer}.hook_resid_post"
    sae = StandardSAE(StandardSAEConfig(d_in=a.d_model, d_sae=a.d_sae, dtype="float32", device="cpu",
                                        apply_b_dec_to_input=True))
    sae.cfg.metadata.hook_name = hook
    sae.cfg.metadata.model_name = "bench"
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        W_dec = torch.randn(a.d_sae, a.d_model, generator=g)
        sae.W_dec.copy_(W_dec / W_dec.norm(dim=-1, keepdim=True))
        # encoder: the decoder's transpose (tied init) scaled to unit-variance pre-activations on this model
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            x = adapter.capture_batch(torch.from_numpy(rows[:8]), f"resid_post.{a.sae_layer}").reshape(-1, a.d_model)
        sae.b_dec.copy_(x.mean(0))
        W_enc = sae.W_dec.T.clone()
        W_enc /= ((x - x.mean(0)) @ W_enc).std(0, keepdim=True)
        sae.W_enc.copy_(W_enc)
        sae.b_enc.fill_(-1.5)  # ~7% density on unit-variance pre-activations
    sae.save_model(str(work / "sae"))
    (work / "stamp.json").write_text(stamp)
    return cfg


def main(argv=None):
    a = args_parser().parse_args(argv)
    work = Path(a.work)
    if a.side == "saedash":
        return saedash_side(a, work)
    import warnings

    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    cfg = prepare(a, work)
    sd = {"error": None}
    if not Path(a.saedash_python).exists():
        sd["error"] = f"no SAEDashboard venv at {a.saedash_python}"
    elif not (a.reuse_saedash and (work / "saedash.json").exists()):
        (work / "saedash.json").unlink(missing_ok=True)
        argv_sd = [a.saedash_python, str(HERE), "--side", "saedash", "--work", str(work)] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items()
            if k not in ("side", "work", "saedash_python", "reuse_saedash")]
        proc = subprocess.run(argv_sd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
        if proc.returncode:
            sd["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"
            print(proc.stderr[-3000:], file=sys.stderr)
    if (work / "saedash.json").exists():
        sd.update(json.loads((work / "saedash.json").read_text()))

    sys.path.insert(0, str(HERE.parents[1]))
    from mechviz.analysis.dashboards import _encode_rows, feature_dashboards
    from mechviz.models import wrap
    from mechviz.saes import load_sae

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        adapter = wrap(build_model(cfg, work, tokenizer(work)), name="bench")
    sae = load_sae(work / "sae")
    rows = np.load(work / "tokens.npy")
    T = rows.shape[1]
    feats = range(a.features)
    t0 = time.perf_counter()
    dash = feature_dashboards(adapter, sae, rows, features=feats, k=a.k, samples_per_interval=5, context=(5, 5),
                              batch_size=a.batch_size, ignore_bos=False,
                              ignore_positions=list(range(6)) + list(range(-5, 0)),
                              progress=False, allow_model_mismatch=True)
    mv_wall = time.perf_counter() - t0
    t0 = time.perf_counter()  # the floor both sides share: the model's forward up to the site, nothing else
    for r0 in range(0, len(rows), a.batch_size):
        adapter.capture_batch(torch.from_numpy(rows[r0:r0 + a.batch_size]), sae.site)
    fwd_wall = time.perf_counter() - t0

    agree = ties = differ = 0
    if "wall_s" in sd:
        top = np.load(work / "saedash_top.npy")
        for i, f in enumerate(feats):
            fd = dash.feature(f)
            ours = set(zip(fd.top.rows.tolist(), fd.top.positions.tolist()))
            theirs = {tuple(x) for x in top[i].tolist() if x[0] >= 0}
            if ours == theirs:
                agree += 1
                continue
            diff = sorted(ours ^ theirs)
            acts = {}
            for r, p in diff:  # the activations at the differing places, recomputed
                acts[(r, p)] = float(_encode_rows(adapter, sae, np.asarray([f]), rows[[r]])[0, p, 0])
            kth = float(fd.top.acts[-1])
            if len(ours) == len(theirs) and all(abs(v - kth) < 1e-5 for v in acts.values()):
                ties += 1
            else:
                differ += 1
    print(f"model: TL HookedTransformer {a.layers} layers, d_model {a.d_model}, vocab {cfg['d_vocab']}; SAE "
          f"{sae.d_sae} features (ReLU) on resid_post.{a.sae_layer}; corpus {rows.shape[0]} rows x {T} tokens; "
          f"{a.features} features; torch threads {a.threads}")
    print(f"{'':14}{'wall s':>9}{'ratio':>8}  notes")
    if "wall_s" in sd:
        print(f"{'SAEDashboard':14}{sd['wall_s']:9.2f}{1.0:8.2f}  sae-dashboard {sd['version']}, torch {sd['torch']}"
              f" (own venv, same machine, back to back)")
        print(f"{'mechviz':14}{mv_wall:9.2f}{sd['wall_s'] / mv_wall:8.1f}x "
              f"top-{a.k} contexts: {agree} same, {ties} same up to ties, {differ} differ (of {a.features})")
    else:
        print(f"{'SAEDashboard':14}{'-':>9}{'-':>8}  not run: {sd['error']}")
        print(f"{'mechviz':14}{mv_wall:9.2f}{'':8}")
    print(f"{'forward only':14}{fwd_wall:9.2f}{'':8}  the model up to the SAE's site, batches of {a.batch_size} rows "
          "(both sides run it once)")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
