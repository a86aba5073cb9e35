"""MiniLM loads offline from its PyPI package, encodes titles, and the cache returns the same vectors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from streamrec.text_encoder import DIM, cached_title_vectors, encode_texts


def test_minilm_offline_encodes_meaningfully(tmp_path: Path) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    titles = ["Red matte lipstick", "Crimson lip colour, matte finish", "Anti-dandruff shampoo for men"]
    vecs = encode_texts(titles)
    assert vecs.shape == (3, DIM) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-4)
    sims = vecs @ vecs.T
    assert sims[0, 1] > sims[0, 2] + 0.2, "two lipsticks are closer than a lipstick and a shampoo"
    first = cached_title_vectors(titles, tmp_path, "toy", progress=False)
    assert len(list(tmp_path.glob("toy-minilm-*.npy"))) == 1
    np.testing.assert_array_equal(cached_title_vectors(titles, tmp_path, "toy", progress=False), first)
