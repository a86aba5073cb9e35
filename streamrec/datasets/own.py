"""Loaders for a user's own click log: RecBole atomic files and a plain CSV.

- RecBole atomic files: `NAME.inter` (tab-separated, a header of `field:type` names) with the user,
  item and (optionally) timestamp fields found by name (`user_id`, `item_id`, `timestamp`, or the
  first field whose name starts with `user`, `item`, `time`); beside it an optional `NAME.item` with
  the item field and any of a title (`title`, `movie_title`, `name`, `item_name`), categories
  (`categories`, `category`, `class`, `genre`, `genres`) and a brand (`brand`).
- CSV: a header naming `user,item[,timestamp][,title][,category][,brand]` (any order, comma
  separated, quoted as the csv module reads it); categories as a path `Beauty>Makeup>Face` (also
  `/` or `|` as separators).

Without timestamps, a row's position in the file is its time. Items clicked but absent from the
item file get an empty title (their content is missing, the models mask it). The dataset's name is
the file's stem plus the first 8 hex digits of its fingerprint (a hash of the files' bytes), so
checkpoints, results and caches of two different files with one name never mix.
A row that cannot be read is a `UserError` naming the file and line.
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

from streamrec.datasets.schema import Dataset, Item, build_events
from streamrec.errors import UserError

TITLE_FIELDS = ("title", "movie_title", "name", "item_name")
CATEGORY_FIELDS = ("categories", "category", "class", "genre", "genres")
_CATEGORY_SPLIT = re.compile(r"\s*(?:>|/|\|)\s*")
# Python's default (128 KiB) is below some catalogues' description fields.
csv.field_size_limit(1 << 24)


def fingerprint(paths: list[Path]) -> str:
    """sha256 over the files' names and bytes, in the order given."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def is_own_dataset(spec: str) -> bool:
    """A `--dataset` value that names a file or folder rather than a known dataset."""
    return spec.endswith((".inter", ".csv")) or "/" in spec or Path(spec).exists()


def load_own(spec: str) -> Dataset:
    path = Path(spec).expanduser()
    if path.is_dir():
        inters = sorted(path.glob("*.inter"))
        if len(inters) != 1:
            raise UserError(
                f"{path} holds {len(inters)} .inter files",
                "give --dataset the one .inter (or .csv) file to read",
            )
        path = inters[0]
    if not path.is_file():
        raise UserError(f"dataset file {path} does not exist", "give --dataset a RecBole .inter file or a CSV")
    if path.suffix == ".inter":
        return _load_recbole(path)
    if path.suffix == ".csv":
        return _load_csv(path)
    raise UserError(f"{path}: unknown dataset format {path.suffix!r}", "give a RecBole .inter file or a .csv")


def _dataset(path: Path, files: list[Path], clicks: list[tuple[str, str, int]], described: dict[str, Item]) -> Dataset:
    digest = fingerprint(files)
    name = f"{path.stem}-{digest[:8]}"
    return Dataset(name, _items(clicks, described), build_events(name, clicks), fingerprint=digest)


def _field(names: list[str], exact: tuple[str, ...], prefix: str = "") -> int | None:
    for want in exact:
        if want in names:
            return names.index(want)
    if prefix:
        for i, name in enumerate(names):
            if name.startswith(prefix):
                return i
    return None


def _timestamp(raw: str, path: Path, line: int) -> int:
    try:
        return int(float(raw))
    except ValueError:
        msg = f"{path} line {line}: timestamp {raw[:40]!r} is not a number"
        raise UserError(msg, "unix seconds expected") from None


def _categories(raw: str, recbole: bool) -> tuple[str, ...]:
    raw = raw.strip()
    if not raw:
        return ()
    if recbole and ("'" in raw or "," in raw):
        # RecBole's Amazon files write token_seq categories as a quoted, comma-separated list.
        parts = [p.strip().strip("'\"") for p in raw.split(",")]
    elif recbole:
        parts = raw.split()
    else:
        parts = _CATEGORY_SPLIT.split(raw)
    return tuple(p for p in parts if p)


def _rows(path: Path, delimiter: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        reader = csv.reader(fh, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if not header:
            raise UserError(f"{path} is empty", "the first line names the fields")
        return header, [(i, row) for i, row in enumerate(reader, start=2) if row]


def _interactions(
    path: Path, names: list[str], rows: list[tuple[int, list[str]]], recbole: bool
) -> list[tuple[str, str, int]]:
    user = _field(names, ("user_id", "user"), "user")
    item = _field(names, ("item_id", "item"), "item")
    ts = _field(names, ("timestamp", "time"), "time")
    if user is None or item is None:
        kind = "user_id:token and item_id:token" if recbole else "user,item"
        raise UserError(f"{path}: the header names no user or item field", f"the first line must name {kind}")
    out = []
    for line, row in rows:
        if len(row) <= max(user, item, ts or 0):
            raise UserError(f"{path} line {line}: {len(row)} fields, the header has {len(names)}")
        stamp = _timestamp(row[ts], path, line) if ts is not None else line
        out.append((row[user].strip(), row[item].strip(), stamp))
    return out


def _items(clicked: list[tuple[str, str, int]], described: dict[str, Item]) -> list[Item]:
    items = list(described.values())
    seen = set(described)
    for _, item, _ in clicked:
        if item not in seen:
            seen.add(item)
            items.append(Item(item_id=item, title=""))
    return items


def _described(names: list[str], rows: list[tuple[int, list[str]]], recbole: bool) -> dict[str, Item]:
    item = _field(names, ("item_id", "item"), "item")
    if item is None:
        return {}
    title = _field(names, TITLE_FIELDS)
    cats = _field(names, CATEGORY_FIELDS)
    brand = _field(names, ("brand",))

    def cell(row: list[str], i: int | None) -> str:
        return row[i].strip() if i is not None and i < len(row) else ""

    out: dict[str, Item] = {}
    for _, row in rows:
        item_id = cell(row, item)
        if item_id and item_id not in out:
            out[item_id] = Item(
                item_id=item_id,
                title=cell(row, title),
                category_path=_categories(cell(row, cats), recbole),
                brand=cell(row, brand) or None,
            )
    return out


def _load_recbole(inter: Path) -> Dataset:
    header, rows = _rows(inter, "\t")
    names = [h.split(":")[0].strip().lower() for h in header]
    clicks = _interactions(inter, names, rows, recbole=True)
    item_file = inter.with_suffix(".item")
    described: dict[str, Item] = {}
    files = [inter]
    if item_file.is_file():
        files.append(item_file)
        item_header, item_rows = _rows(item_file, "\t")
        described = _described([h.split(":")[0].strip().lower() for h in item_header], item_rows, recbole=True)
    return _dataset(inter, files, clicks, described)


def _load_csv(path: Path) -> Dataset:
    header, rows = _rows(path, ",")
    names = [h.strip().lower() for h in header]
    clicks = _interactions(path, names, rows, recbole=False)
    described = _described(names, rows, recbole=False)
    return _dataset(path, [path], clicks, described)
