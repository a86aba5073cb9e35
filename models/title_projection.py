"""The content-aware SASRec baselines' item encoder (issue 17): a learned linear projection of the
frozen title vector, in the spirit of UniSRec's text adaptor (without its whitening mixture).

"content-SASRec" (`item_encoder="id+text"`) adds it to the item's ID embedding; "text-only SASRec"
(`item_encoder="text"`) uses it alone. They answer whether MUFASA's and CAMMSR's gains come from
their fusion and sequence layers or simply from having title vectors.
"""

from __future__ import annotations

import torch
from torch import nn

from streamrec.models.item_features import ItemFeatures


class TitleProjection(nn.Module):
    def __init__(self, d_title: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_title, dim)

    def forward(self, f: ItemFeatures) -> torch.Tensor:
        """-> (N, D) per item; zeros for items without a title."""
        return self.proj(f.title) * f.title_mask[:, None]
