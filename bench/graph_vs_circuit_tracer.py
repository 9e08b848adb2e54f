"""Attribution graphs: mechviz's ``attribution_graph`` vs circuit-tracer's ``attribute`` on the bundled model
(GPT-2 architecture) and its bundled per-layer JumpReLU transcoders, same prompt and tokens.

Setup: circuit-tracer pins transformers<=4.57.3, so it lives in its own virtual environment:

    python3 -m venv /work/venvs/ctracer
    /work/venvs/ctracer/bin/pip install --no-index --no-deps /opt/wheels/torch-*.whl   # any CPU torch
    /work/venvs/ctracer/bin/pip install circuit-tracer==0.5.0                            # + its deps, from PyPI

Run from the repo root in mechviz's environment (it runs circuit-tracer's side in a subprocess with
``--ct-python``, exchanging .npz files in ``--work``):

    PYTHONPATH=. python bench/graph_vs_circuit_tracer.py --ct-python /work/venvs/ctracer/bin/python

mechviz's side exports the transcoders in circuit-tracer's own layer-file layout (config.yaml + layer_L
.safetensors, read back with mechviz.saes.load_circuit_tracer_transcoders as a round-trip check); circuit-
tracer's side builds a TransformerLens copy of the HF model offline (no LayerNorm folding) and wraps it in its
TransformerLensReplacementModel. Both get the same token ids (BOS first). Conventions that differ and how the
comparison treats them: circuit-tracer zeroes every feature at position 0 (its BOS), so position-0 features
exist only in mechviz's graph and the position-0 error nodes differ by them: edges are compared on the nodes
both graphs have (position-0 error rows/columns left out), scores and pruning are reported side by side.
circuit-tracer accumulates its adjacency in float32; mechviz works in float64.

Measured (2026-12-06, 2 shared CPU cores, circuit-tracer 0.5.0 with transformer-lens 3.2.1 / transformers 4.57.3;
the prompt below, 7 tokens with BOS, and "When Mary and John went to the store, John gave a drink to", 18):
same active features off position 0 (783 / 1735), activations within 3e-6 (float32 model; 3e-15 with
--dtype float64), the same 10 logit targets, probabilities within 1e-7; edges on the common nodes, once
mechviz's token edges are taken from the token embedding alone, within 2e-6 absolute (2e-7 of the largest
edge; 2.4e-7 with --dtype float64, circuit-tracer's float32 edge matrix); in circuit-tracer's conventions,
mechviz's replacement/completeness scores equal circuit-tracer's to 1e-7 and prune() keeps exactly the same
nodes and edges. Raw (each library's own conventions) scores: mechviz 0.885/0.965 vs 0.919/0.976 (7 tokens).
Seconds for one graph (noisy, shared cores): 7 tokens mechviz 9.7-10.9, circuit-tracer 6.4-9.8 (float32);
18 tokens mechviz 23.8 vs 6.2 (float32), 33.4 vs 17.3 (float64).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROMPT = "John gave a drink to"


# -- circuit-tracer's side (its venv; imports nothing from mechviz) --------------------------------------------
def ct_side(work: Path, dtype_name: str) -> None:
    import warnings

    import torch
    import yaml
    from circuit_tracer import attribute
    from circuit_tracer.graph import compute_graph_scores, prune_graph
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel,
    )
    from circuit_tracer.utils.hf_utils import load_transcoders
    from transformer_lens import HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading
    from transformer_lens.pretrained import weight_conversions
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.set_num_threads(2)
    dtype = getattr(torch, dtype_name)
    meta = json.loads((work / "meta.json").read_text())
    t0 = time.perf_counter()
    hf = GPT2LMHeadModel.from_pretrained(meta["model_dir"], torch_dtype=dtype).eval()
    # the bundled tokenizer was saved by transformers 5 (class TokenizersBackend, unknown to 4.57): its files
    tc = json.loads((Path(meta["model_dir"]) / "tokenizer_config.json").read_text())
    tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(meta["model_dir"]) / "tokenizer.json"),
                                  **{k: tc[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if k in tc})
    tok.save_pretrained(work / "tokenizer")   # TransformerLens reloads the tokenizer from its folder
    tok = PreTrainedTokenizerFast.from_pretrained(work / "tokenizer")
    conf = hf.config.to_dict()
    conf["n_ctx"] = conf["n_positions"]   # TransformerLens reads GPT-2's legacy n_ctx (as mechviz's hf_to_tl)
    (work / "tl_config").mkdir(exist_ok=True)
    (work / "tl_config" / "config.json").write_text(json.dumps(conf))
    cfg_dict = loading.convert_hf_model_config(str(work / "tl_config"))
    for k in ("original_architecture", "tokenizer_name"):
        cfg_dict.pop(k, None)
    cfg = HookedTransformerConfig(**cfg_dict, original_architecture="GPT2LMHeadModel", model_name="mechviz-zoo",
                                  device="cpu", dtype=dtype, init_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = TransformerLensReplacementModel(cfg, tokenizer=tok)
    state = weight_conversions.convert_gpt2_weights(hf, cfg)
    model.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                      fold_value_biases=False, refactor_factored_attn_matrices=False)
    tc_cfg = yaml.safe_load((work / "tcs" / "config.yaml").read_text())
    tc_cfg.update(repo_id="", scan="mechviz-zoo",
                  transcoders=[str(work / "tcs" / f"layer_{i}.safetensors") for i in range(cfg.n_layers)])
    tcs = load_transcoders(tc_cfg, device=torch.device("cpu"), dtype=dtype, lazy_encoder=False, lazy_decoder=False)
    model._configure_replacement_model(tcs)
    model.eval()
    t_load = time.perf_counter() - t0
    ids = torch.tensor(meta["tokens"])
    attribute(ids, model, batch_size=256)   # warm-up
    t0 = time.perf_counter()
    g = attribute(ids, model, batch_size=256)
    t_attr = time.perf_counter() - t0
    t0 = time.perf_counter()
    rep, comp = compute_graph_scores(g)
    node_mask, edge_mask, _ = prune_graph(g, 0.8, 0.98)
    t_post = time.perf_counter() - t0
    with torch.no_grad():
        real = model(ids[None])[0, -1].double()
    np.savez(work / "ct.npz", tokens=g.input_tokens.cpu().numpy(), active=g.active_features.cpu().numpy(),
             act_values=g.activation_values.double().cpu().numpy(), selected=g.selected_features.cpu().numpy(),
             adjacency=g.adjacency_matrix.double().cpu().numpy(),
             logit_tokens=np.array([t.vocab_idx for t in g.logit_targets]),
             logit_probs=g.logit_probabilities.double().cpu().numpy(), scores=np.array([rep, comp]),
             node_mask=node_mask.cpu().numpy(), edge_mask=edge_mask.cpu().numpy(),
             real_logits=(real - real.mean()).numpy(), times=np.array([t_load, t_attr, t_post]))


# -- mechviz's side ------------------------------------------------------------------------------------------
def export_transcoders(tcs, folder: Path) -> None:
    """The bundled SAELens transcoders in circuit-tracer's layer-file layout (W_enc as F.linear's weight)."""
    import yaml
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "model_name": "mechviz-zoo", "model_kind": "transcoder_set", "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "hook_mlp_out"}))
    for layer, tc in enumerate(tcs):
        w = {"W_enc": tc.W_enc.T, "W_dec": tc.W_dec, "b_enc": tc.b_enc, "b_dec": tc.b_dec}
        if tc.threshold is not None:
            w["activation_function.threshold"] = tc.threshold
        save_file({k: v.detach().float().contiguous() for k, v in w.items()}, str(folder / f"layer_{layer}.safetensors"))


def token_only_edges(g, tcs, wte) -> np.ndarray:
    """Edges ``[feature and logit rows, T]`` from each position's *token* embedding alone, in mechviz's frozen
    model: circuit-tracer's token node is ``hook_embed`` (its position embedding is a constant), mechviz's embedding
    node is token + position embedding. The frozen model is linear, so the edge is ``d target / d emb[t] . wte[t]``."""
    import torch

    nF, T = g.n_features, len(g.tokens)
    feat = [n[1:] for n in g.nodes[:nF]]
    enc = torch.stack([tcs[l].W_enc[:, f].double() for l, t, f in feat])
    fl = torch.tensor([l * T + t for l, t, _ in feat])
    e0 = g.emb.clone().requires_grad_(True)
    with torch.enable_grad():
        ins, lg = g.frozen.run(e0, g.add)
        y = torch.cat([(ins.flatten(0, 1)[fl] * enc).sum(-1), lg[g.logit_tokens]])
        rows = []
        for i in range(0, len(y), 256):
            eye = torch.eye(len(y), dtype=y.dtype)[i:i + 256]
            (ge,) = torch.autograd.grad(y, (e0,), eye, retain_graph=True, is_grads_batched=True)
            rows.append((ge * wte.double()).sum(-1))
    return torch.cat(rows).detach().numpy()


def mechviz_side(work: Path, prompt: str) -> dict:
    import torch

    import mechviz
    import mechviz.zoo
    from mechviz.analysis.graph import attribution_graph, prune
    from mechviz.saes import load_circuit_tracer_transcoders, load_sae

    torch.set_num_threads(2)
    model, tok = mechviz.zoo.load_default_model()
    adapter = mechviz.wrap(model, tok)
    tcs = [load_sae(d) for d in mechviz.zoo.dictionary_dirs("transcoders")]
    export_transcoders(tcs, work / "tcs")
    back = load_circuit_tracer_transcoders(work / "tcs")   # round trip through circuit-tracer's layout
    x = torch.randn(7, tcs[0].d_in)
    assert all(torch.allclose(a.forward(x), b.forward(x), atol=1e-5) for a, b in zip(tcs, back))
    ids = adapter.to_tokens(prompt).reshape(-1).tolist()
    if ids[0] not in tok.all_special_ids:
        ids = [tok.bos_token_id] + ids
    model_dir = Path(mechviz.zoo.__file__).parent / "default" / "model"
    (work / "meta.json").write_text(json.dumps({"tokens": ids, "model_dir": str(model_dir)}))
    attribution_graph(adapter, tcs, ids)   # warm-up
    t0 = time.perf_counter()
    g = attribution_graph(adapter, tcs, ids)
    t_attr = time.perf_counter() - t0
    t0 = time.perf_counter()
    node_mask, edge_mask = prune(g, 0.8, 0.98)
    t_post = time.perf_counter() - t0
    feats = np.array([n[1:] for n in g.nodes[:g.n_features]]).reshape(-1, 3)
    tok_edges = token_only_edges(g, tcs, model.transformer.wte.weight.detach()[torch.tensor(ids)])
    np.savez(work / "mv.npz", tokens=np.array(g.tokens), active=feats, act_values=g.values[:g.n_features],
             adjacency=g.adjacency, logit_tokens=np.array(g.logit_tokens), logit_probs=g.logit_probs,
             scores=np.array([g.replacement_score, g.completeness_score]), node_mask=node_mask, edge_mask=edge_mask,
             real_logits=g.real_logits, tok_edges=tok_edges, times=np.array([np.nan, t_attr, t_post]))
    return {"n_layers": len(tcs)}


# -- comparison ----------------------------------------------------------------------------------------------
def compare(work: Path, n_layers: int) -> dict:
    mv, ct = dict(np.load(work / "mv.npz")), dict(np.load(work / "ct.npz"))
    T = len(mv["tokens"])
    assert list(mv["tokens"]) == list(ct["tokens"]), (mv["tokens"], ct["tokens"])
    out: dict = {"tokens": T, "n_layers": n_layers}
    fm, fc = [tuple(r) for r in mv["active"]], [tuple(r) for r in ct["active"][ct["selected"]]]
    sm, sc = set(fm), set(fc)
    out["features"] = {"mechviz": len(fm), "circuit_tracer": len(fc), "common": len(sm & sc),
                       "only_mechviz": len(sm - sc), "only_mechviz_at_pos0": sum(1 for f in sm - sc if f[1] == 0),
                       "only_circuit_tracer": len(sc - sm)}
    common = [f for f in fm if f in sc]
    va = dict(zip(fm, mv["act_values"]))
    vc = dict(zip([tuple(r) for r in ct["active"]], ct["act_values"]))
    dv = np.array([va[f] - vc[f] for f in common])
    out["activation_max_abs_diff"] = float(np.abs(dv).max()) if len(dv) else 0.0
    out["logit_targets"] = {"mechviz": mv["logit_tokens"].tolist(), "circuit_tracer": ct["logit_tokens"].tolist(),
                            "prob_max_abs_diff": float(np.abs(mv["logit_probs"] - ct["logit_probs"]).max())
                            if len(mv["logit_probs"]) == len(ct["logit_probs"]) else None}
    out["real_logits_max_abs_diff"] = float(np.abs(mv["real_logits"] - ct["real_logits"]).max())
    # node index maps onto the common nodes: features both have, errors at positions >= 1, tokens, logits
    nFm, nFc, nE = len(fm), len(fc), n_layers * T
    ct_feat_index = {f: i for i, f in enumerate(fc)}
    idx_m, idx_c = [], []
    for i, f in enumerate(fm):
        if f in ct_feat_index:
            idx_m.append(i)
            idx_c.append(ct_feat_index[f])
    for e in range(nE):
        if e % T != 0:
            idx_m.append(nFm + e)
            idx_c.append(nFc + e)
    for t in range(T):
        idx_m.append(nFm + nE + t)
        idx_c.append(nFc + nE + t)
    if out["logit_targets"]["mechviz"] == out["logit_targets"]["circuit_tracer"]:
        for k in range(len(mv["logit_tokens"])):
            idx_m.append(len(mv["adjacency"]) - len(mv["logit_tokens"]) + k)
            idx_c.append(len(ct["adjacency"]) - len(ct["logit_tokens"]) + k)
    A = mv["adjacency"][np.ix_(idx_m, idx_m)]
    B = ct["adjacency"][np.ix_(idx_c, idx_c)]
    diff = np.abs(A - B)
    scale = np.abs(A).max()
    out["adjacency"] = {"shape_mechviz": list(mv["adjacency"].shape), "shape_circuit_tracer": list(ct["adjacency"].shape),
                        "compared_nodes": len(idx_m), "max_abs_entry": float(scale), "max_abs_diff": float(diff.max()),
                        "max_diff_over_max_entry": float(diff.max() / scale),
                        "max_rel_diff_entries_over_1e-3_of_max": float(
                            (diff / np.maximum(np.abs(A), 1e-30))[np.abs(A) > 1e-3 * scale].max()),
                        "nonzero_pattern_equal": bool(((np.abs(A) > 1e-6 * scale) == (np.abs(B) > 1e-6 * scale)).all())}
    # circuit-tracer's token nodes carry the token embedding only: mechviz's edges from the token embedding alone
    tok_m = mv["adjacency"].copy()
    rows = np.r_[0:nFm, len(tok_m) - len(mv["logit_tokens"]):len(tok_m)]
    tok_m[np.ix_(rows, np.arange(nFm + nE, nFm + nE + T))] = mv["tok_edges"]
    A2 = tok_m[np.ix_(idx_m, idx_m)]
    d2 = np.abs(A2 - B)
    out["adjacency_token_embedding_only"] = {
        "max_abs_diff": float(d2.max()), "max_diff_over_max_entry": float(d2.max() / np.abs(A2).max()),
        "max_rel_diff_entries_over_1e-3_of_max": float(
            (d2 / np.maximum(np.abs(A2), 1e-30))[np.abs(A2) > 1e-3 * np.abs(A2).max()].max()),
        "nonzero_pattern_equal": bool(((np.abs(A2) > 1e-6 * scale) == (np.abs(B) > 1e-6 * scale)).all())}
    # mechviz's graph in circuit-tracer's conventions (its whole MLP output at position 0, features and error,
    # is a constant: no node; token nodes = token embedding alone), then mechviz's own scores and pruning on it,
    # against circuit-tracer's
    n_c, nL = len(ct["adjacency"]), len(mv["logit_tokens"])
    cols = np.zeros((len(tok_m), n_c))   # mechviz node -> circuit-tracer node (position-0 MLP nodes: none)
    for i, f in enumerate(fm):
        if f in ct_feat_index:
            cols[i, ct_feat_index[f]] = 1
    cols[nFm:nFm + nE + T, nFc:nFc + nE + T] = np.eye(nE + T)
    cols[nFm + np.arange(0, nE, T), nFc + np.arange(0, nE, T)] = 0
    cols[len(tok_m) - nL:, n_c - nL:] = np.eye(nL)
    rows_c = [i for i, f in enumerate(fm) if f in ct_feat_index] + list(range(nFm, len(tok_m)))
    conv = (tok_m @ cols)[rows_c]
    if out["logit_targets"]["mechviz"] == out["logit_targets"]["circuit_tracer"]:
        out.update(ct_conventions(conv, ct, nFc, nE, T, nL, mv["logit_probs"]))
    out["scores"] = {"mechviz": mv["scores"].tolist(), "circuit_tracer": ct["scores"].tolist()}
    nm, nc = mv["node_mask"][idx_m], ct["node_mask"][idx_c]
    out["pruned_nodes"] = {"mechviz": int(mv["node_mask"].sum()), "circuit_tracer": int(ct["node_mask"].sum()),
                           "agree_on_common": int((nm == nc).sum()), "common": len(idx_m)}
    out["seconds"] = {"mechviz_attribution": float(mv["times"][1]), "circuit_tracer_attribution": float(ct["times"][1]),
                      "mechviz_prune": float(mv["times"][2]), "circuit_tracer_scores_and_prune": float(ct["times"][2]),
                      "circuit_tracer_model_and_transcoder_load": float(ct["times"][0])}
    return out


def ct_conventions(conv, ct, nF, nE, T, nL, probs) -> dict:
    from types import SimpleNamespace

    from mechviz.analysis.graph import graph_scores, prune

    g = SimpleNamespace(adjacency=conv, n_features=nF, n_errors=nE, n_embeds=T, n_logits=nL, logit_probs=probs,
                        nodes=[None] * len(conv))
    d = np.abs(conv - ct["adjacency"])
    node, edge = prune(g, 0.8, 0.98)
    return {"in_circuit_tracer_conventions": {
        "adjacency_max_abs_diff": float(d.max()), "adjacency_max_diff_over_max_entry": float(d.max() / np.abs(conv).max()),
        "scores_mechviz": list(graph_scores(g)), "scores_circuit_tracer": ct["scores"].tolist(),
        "pruned_nodes_mechviz": int(node.sum()), "pruned_nodes_circuit_tracer": int(ct["node_mask"].sum()),
        "node_masks_equal": bool((node == ct["node_mask"]).all()),
        "edges_mechviz": int(edge.sum()), "edges_circuit_tracer": int(ct["edge_mask"].sum()),
        "edge_mask_disagreements": int((edge != ct["edge_mask"]).sum())}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ct-python", help="python of circuit-tracer's venv")
    ap.add_argument("--work", default="/tmp/mechviz-ct-bench")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="circuit-tracer's model dtype")
    ap.add_argument("--ct-side", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.ct_side:
        return ct_side(work, args.dtype)
    if not args.ct_python:
        sys.exit("--ct-python PATH is needed (circuit-tracer's venv: see the setup at the top of this file)")
    info = mechviz_side(work, args.prompt)
    subprocess.run([args.ct_python, __file__, "--ct-side", "--work", str(work), "--dtype", args.dtype], check=True)
    print(json.dumps(compare(work, info["n_layers"]), indent=1))


if __name__ == "__main__":
    main()
