"""The skeleton's content encoder: deterministic, normalised, and recency-weighted."""

from __future__ import annotations

import torch

from streamrec.models.content_baseline import ContentBaseline, ContentBaselineConfig, item_tokens

CFG = ContentBaselineConfig(dim=16, buckets=1024)


def test_same_content_same_vector_across_instances() -> None:
    a, b = ContentBaseline(CFG), ContentBaseline(CFG)
    ids = [a.token_ids("Red Lipstick", ("Makeup", "Lips"), "Acme"), a.token_ids("Shampoo", ("Hair Care",), None)]
    assert ids[0] == b.token_ids("Red Lipstick", ("Makeup", "Lips"), "Acme")
    va, vb = a.encode_items(ids), b.encode_items(ids)
    torch.testing.assert_close(va, vb)
    torch.testing.assert_close(va.norm(dim=-1), torch.ones(2))


def test_shared_category_means_closer_vectors() -> None:
    m = ContentBaseline(CFG)
    v = m.encode_items(
        [
            m.token_ids("alpha", ("Makeup", "Lips"), None),
            m.token_ids("beta", ("Makeup", "Lips"), None),
            m.token_ids("gamma", ("Hair Care", "Shampoo"), None),
        ]
    )
    assert float(v[0] @ v[1]) > float(v[0] @ v[2])


def test_tokens_weight_categories() -> None:
    toks = item_tokens("A b", ("X", "Y"), "Z", category_weight=2)
    assert toks.count("c:x") == 2 and toks.count("c:x/y") == 2 and "b:z" in toks and "w:a" in toks


def test_user_vector_ignores_padding_and_favours_recent() -> None:
    m = ContentBaseline(CFG)
    items = torch.eye(4, 16)  # (4, D)
    seq = items.unsqueeze(0)  # (1, 4, D)
    mask = torch.tensor([[False, True, True, True]])
    user = m.encode_users(seq, mask)
    assert float(user[0, 0]) == 0.0, "padding contributes nothing"
    assert float(user[0, 3]) > float(user[0, 2]) > float(user[0, 1]) > 0
    seq2 = seq.clone()
    seq2[0, 0] = 100.0
    torch.testing.assert_close(m.encode_users(seq2, mask), user)
