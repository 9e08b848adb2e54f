"""Compare mode (mechviz.Compare): any view over two prompts side by side with one selection and one
colour scale, or their difference, checked against each prompt's own numbers on the bundled model."""

from __future__ import annotations

import numpy as np
import pytest

import mechviz
from mechviz.analysis.dla import direct_logit_attribution, needs as dla_needs
from mechviz.analysis.heads import head_scores
from mechviz.widgets.attention import _signed_pool
from mechviz.widgets.transport import pack

A = "The cat sat on the mat. The cat"
B = "The dog sat on the rug. The dog"     # same number of tokens as A on the bundled tokenizer


@pytest.fixture(scope="module")
def lab():
    return mechviz.Lab.default(prompt=A)


def patterns(lab, prompt):
    sites = [f"attn_pattern.{layer}" for layer in range(lab.model.n_layers)]
    run = lab.model.run(prompt, capture=sites)
    return np.stack([run[s].numpy() for s in sites]), run


def dla(lab, prompt, answer=" the", wrong=" a"):
    run = lab.model.run(prompt, capture=dla_needs(lab.model.n_layers, by_source=True))
    ids = [lab.model.to_tokens(t)[-1].item() for t in (answer, wrong)]
    return direct_logit_attribution(lab.model, run, ids[0], ids[1], -1, by_source=True)


def test_prompts_line_up(lab):
    assert len(lab.model.to_tokens(A)) == len(lab.model.to_tokens(B))


def test_side_by_side_each_prompt_its_numbers_one_selection(lab):
    cmp = mechviz.Compare(lab, B)
    box = cmp.side_by_side(mechviz.AttentionView)
    va, vb = cmp.pairs[-1]
    assert [c.children[0] for c in box.children] == [lab.prompt_box, cmp.b.prompt_box]
    assert (va.prompt, vb.prompt) == (A, B)
    np.testing.assert_allclose(va.data["pattern"], patterns(lab, A)[0], atol=1e-6)
    np.testing.assert_allclose(vb.data["pattern"], patterns(lab, B)[0], atol=1e-6)
    assert va.title.startswith("A") and vb.title.startswith("B")
    # one selection, both ways, and the Lab's own
    va.layer, va.head = 2, 1
    assert (vb.layer, vb.head) == (2, 1) and lab.selection.layer == 2
    vb.token = 4
    assert va.token == 4
    # B's prompt changes B alone
    cmp.prompt = "The cat sat on the mat. The"
    assert vb.prompt == "The cat sat on the mat. The" and va.prompt == A
    np.testing.assert_allclose(vb.data["pattern"], patterns(lab, "The cat sat on the mat. The")[0], atol=1e-6)
    assert "A=" in repr(cmp) and "AttentionView" in repr(cmp)
    for v in (va, vb):
        v.close()


def test_side_by_side_shares_the_colour_scale(lab):
    cmp = mechviz.Compare(lab, B)
    cmp.side_by_side(mechviz.HeadGridView, answer=" the", wrong=" a")
    ga, gb = cmp.pairs[-1]
    np.testing.assert_allclose(ga.values, dla(lab, A).heads, atol=1e-5)
    np.testing.assert_allclose(gb.values, dla(lab, B).heads, atol=1e-5)
    own = [max(np.abs(np.r_[d.heads.ravel(), d.attn, d.mlp])) for d in (dla(lab, A), dla(lab, B))]
    for g in (ga, gb):
        assert g.vmax == pytest.approx(max(own), rel=1e-5) and g.vmin == pytest.approx(-max(own), rel=1e-5)
    # a new prompt for A: the union of the new ranges
    lab.prompt = "The dog"
    new = max(np.abs(np.r_[dla(lab, "The dog").heads.ravel(), dla(lab, "The dog").attn, dla(lab, "The dog").mlp]))
    assert ga.vmax == pytest.approx(max(new, own[1]), rel=1e-5) == gb.vmax
    lab.prompt = A
    for g in (ga, gb):
        g.close()


def test_attention_difference_is_a_minus_b(lab):
    cmp = mechviz.Compare(lab, B)
    d = cmp.difference(mechviz.AttentionView)
    pa, ra = patterns(lab, A)
    pb, rb = patterns(lab, B)
    np.testing.assert_allclose(d.data["pattern"], pa - pb, atol=1e-6)
    assert d.signed and d.data["pattern"].min() < -0.05 and d.data["pattern"].max() > 0.05
    assert d.tokens == [x if x == y else f"{x} | {y}" for x, y in zip(ra.token_strs, rb.token_strs)]
    assert " c |  do" in d.tokens
    # on the wire: 128 + round(127 v) as bytes (0 exact); thumbnails keep the value furthest from 0
    layer = d.detail_layer
    wire = np.frombuffer(pack(d.detail, "uint8")["data"], np.uint8).reshape(d.detail.shape)
    np.testing.assert_array_equal(wire, np.round(128 + 127 * (pa[layer] - pb[layer])))
    assert (wire[np.triu_indices(len(d.tokens), 1)[0] * 0, *np.triu_indices(len(d.tokens), 1)] == 128).all()
    x = np.array([[[0.1, -0.6], [0.3, 0.2]]])
    assert _signed_pool(np.tile(x, (1, 40, 40)), 2)[0].tolist() == [[-0.6] * 2] * 2
    # both prompts followed: an edit of A, then of B
    lab.prompt = B
    assert np.abs(d.data["pattern"]).max() == 0.0
    cmp.prompt = A
    np.testing.assert_allclose(d.data["pattern"], pb - pa, atol=1e-6)
    lab.prompt = A
    d.close()


def test_difference_of_different_lengths_says_what_to_do_and_keeps_the_last_view(lab):
    cmp = mechviz.Compare(lab, B)
    d = cmp.difference(mechviz.AttentionView)
    side = cmp.side_by_side(mechviz.AttentionView)  # noqa: F841
    good = d.data["pattern"].copy()
    with pytest.raises(ValueError, match="same length: A has 13 tokens, B 11.*side_by_side"):
        cmp.prompt = "The dog sat on the mat. The"
    assert "same length" in d.error
    np.testing.assert_array_equal(d.data["pattern"], good)          # the last good view stays
    va, vb = cmp.pairs[-1]
    assert va.error == "" and vb.error == "" and lab.prompt_box.error == ""  # A's views are not blamed
    assert vb.prompt == "The dog sat on the mat. The"                # B's own views still follow B
    cmp.prompt = B
    assert d.error == ""
    for v in (d, va, vb):
        v.close()


def test_head_grid_difference_dla_and_detector(lab):
    cmp = mechviz.Compare(lab, B)
    g = cmp.difference(mechviz.HeadGridView, answer=" the", wrong=" a")
    da, db = dla(lab, A), dla(lab, B)
    np.testing.assert_allclose(g.values, da.heads - db.heads, atol=1e-5)
    np.testing.assert_allclose(g.extra, np.stack([da.attn - db.attn, da.mlp - db.mlp], 1), atol=1e-5)
    np.testing.assert_allclose(g.by_position, (da.heads_by_source - db.heads_by_source).reshape(-1, len(da.token_strs)),
                               atol=1e-5)
    terms = dict(g.terms)
    assert terms["total"] == pytest.approx(da.total - db.total, abs=1e-5)
    assert terms["embed"] == pytest.approx(da.embed - db.embed, abs=1e-5)
    assert g.diverging and g.value_label.startswith("A − B") and g.vmax == -g.vmin > 0
    assert isinstance(g.result, mechviz.widgets.base.Difference)
    # prompts of different lengths: per-head numbers still subtract, the by-token split is left out
    cmp.prompt = "The dog sat on the mat. The"
    assert g.by_position is None and "differ in length" in g.note
    np.testing.assert_allclose(g.values, da.heads - dla(lab, "The dog sat on the mat. The").heads, atol=1e-5)
    p = cmp.difference(mechviz.HeadGridView, detector="previous_token")
    sa = head_scores(lab.model, "previous_token", run=patterns(lab, A)[1]).scores
    sb = head_scores(lab.model, "previous_token", run=patterns(lab, cmp.prompt)[1]).scores
    np.testing.assert_allclose(p.values, sa - sb, atol=1e-5)
    assert p.diverging
    for v in (g, p):
        v.close()


def test_refusals(lab):
    cmp = mechviz.Compare(lab, B)
    with pytest.raises(TypeError, match="LogitLensView has no difference mode.*side_by_side"):
        cmp.difference(mechviz.LogitLensView)
    with pytest.raises(TypeError, match="view class"):
        cmp.side_by_side(lab.attention())
    with pytest.raises(TypeError, match="path patching compares its own two prompts"):
        cmp.difference(mechviz.HeadGridView, path=dict(clean=A, corrupted=B, answers=(" the", " a")))
    assert cmp.differences == []
