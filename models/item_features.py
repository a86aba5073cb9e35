"""Item content as tensors, one row per item (row 0 is padding), with a mask per modality.

Modalities: `title` (a sentence-encoder vector of the title, e.g. MiniLM, 384-d), `attr` (a bag of
attribute tokens: every prefix of the category path and the brand), and any precomputed vectors a
dataset ships (`extra`, e.g. audio features). A modality an item lacks is masked, never silently
zero-filled: every consumer of these tensors takes the mask with the values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ItemFeatures:
    title: torch.Tensor  # (N+1, d_title) float
    title_mask: torch.Tensor  # (N+1,) bool
    attr_tokens: torch.Tensor  # (N+1, A) long, 0 = no token
    attr_vocab: int
    category: torch.Tensor  # (N+1,) long, top-level category (genre) id, 0 = unknown
    n_categories: int
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (N+1, d)
    extra_mask: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (N+1,) bool

    def __post_init__(self) -> None:
        n = self.title.shape[0]
        assert self.title_mask.shape == (n,) and self.attr_tokens.shape[0] == n and self.category.shape == (n,)
        for name, x in self.extra.items():
            assert x.shape[0] == n and self.extra_mask[name].shape == (n,), f"modality {name} has wrong rows"

    @property
    def n_rows(self) -> int:
        return self.title.shape[0]

    @property
    def attr_mask(self) -> torch.Tensor:
        return (self.attr_tokens > 0).any(-1)

    @property
    def modality_names(self) -> list[str]:
        return ["title", "attr", *sorted(self.extra)]

    def to(self, device: torch.device | str) -> ItemFeatures:
        return ItemFeatures(
            self.title.to(device),
            self.title_mask.to(device),
            self.attr_tokens.to(device),
            self.attr_vocab,
            self.category.to(device),
            self.n_categories,
            {k: v.to(device) for k, v in self.extra.items()},
            {k: v.to(device) for k, v in self.extra_mask.items()},
        )

    def rows(self, idx: torch.Tensor) -> ItemFeatures:
        """The features of items `idx` (1-d long), for encoding a few (new) items."""
        return ItemFeatures(
            self.title[idx],
            self.title_mask[idx],
            self.attr_tokens[idx],
            self.attr_vocab,
            self.category[idx],
            self.n_categories,
            {k: v[idx] for k, v in self.extra.items()},
            {k: v[idx] for k, v in self.extra_mask.items()},
        )

    def append(self, more: ItemFeatures) -> ItemFeatures:
        """These rows followed by `more`'s rows (new items joining the catalogue)."""
        assert self.attr_vocab == more.attr_vocab and self.n_categories == more.n_categories, "vocabularies differ"
        assert set(self.extra) == set(more.extra), "the same modalities on both sides"
        return ItemFeatures(
            torch.cat([self.title, more.title]),
            torch.cat([self.title_mask, more.title_mask]),
            torch.cat([self.attr_tokens, more.attr_tokens]),
            self.attr_vocab,
            torch.cat([self.category, more.category]),
            self.n_categories,
            {k: torch.cat([v, more.extra[k]]) for k, v in self.extra.items()},
            {k: torch.cat([v, more.extra_mask[k]]) for k, v in self.extra_mask.items()},
        )
