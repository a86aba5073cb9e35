"""Loader for Amazon Beauty 5-core (McAuley et al. 2015) as shipped in `amazon-beauty/`.

Clicks come from `derived_interactions.tsv` (user, ASIN, day-resolution timestamp, position), items
from the RecBole atomic file `Amazon_Beauty.item`. The root category "Beauty" is dropped from every
path, so `category_path[0]` is the top-level genre (Skin Care, Hair Care, Makeup, ...).
"""

from __future__ import annotations

import ast
import csv
from pathlib import Path

from streamrec.datasets.schema import Dataset, Item, build_events

NAME = "amazon-beauty"
REQUIRED = ("Amazon_Beauty.item", "derived_interactions.tsv")


def _parse_categories(raw: str) -> tuple[str, ...]:
    # The field is a Python-literal list body: 'Beauty', 'Fragrance', "Women's", ...
    try:
        parsed = ast.literal_eval(f"[{raw}]")
        parts = [str(p).strip() for p in parsed if str(p).strip()]
    except (ValueError, SyntaxError):
        parts = [p.strip().strip("'\"") for p in raw.split(",") if p.strip()]
    if parts and parts[0] == "Beauty":
        parts = parts[1:]
    return tuple(parts)


def _parse_price(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if value > 0 else None


def load(root: Path) -> Dataset:
    items: list[Item] = []
    with open(root / "Amazon_Beauty.item", newline="", encoding="utf-8") as fh:
        # Default quoting: some titles hold tabs inside double quotes.
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader)
        assert header[0].startswith("item_id"), f"unexpected header {header}"
        for row in reader:
            asin, title, _sales_type, _rank, cats, price, brand = row
            items.append(
                Item(
                    item_id=asin,
                    title=title.strip() or f"item {asin}",
                    category_path=_parse_categories(cats),
                    brand=brand.strip() or None,
                    price=_parse_price(price),
                )
            )
    rows: list[tuple[str, str, int]] = []
    with open(root / "derived_interactions.tsv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        sortable = [(int(r["user_id"]), int(r["pos"]), r["asin"], int(r["timestamp"])) for r in reader]
    # Each user's rows in their own order, so same-day clicks keep the sequence order.
    sortable.sort(key=lambda r: (r[0], r[1]))
    rows = [(str(u), asin, ts) for u, _pos, asin, ts in sortable]
    return Dataset(NAME, items, build_events(NAME, rows))
