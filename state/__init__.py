"""State adapters: per-user sequences (RocksDB), the catalogue (RocksDB) and the item index (FAISS)."""
