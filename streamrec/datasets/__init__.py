"""Dataset loaders into one item schema and one event schema."""

from streamrec.datasets.registry import DatasetMissingError, available_datasets, load_dataset
from streamrec.datasets.schema import Dataset, Event, Item

__all__ = ["Dataset", "DatasetMissingError", "Event", "Item", "available_datasets", "load_dataset"]
