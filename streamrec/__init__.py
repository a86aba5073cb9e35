"""streamrec: a streaming real-time recommender with incremental updates (MUFASA, CAMMSR)."""

__version__ = "0.1.0"
