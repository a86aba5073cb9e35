"""Pure-PyTorch models of streamrec (no Kafka, RocksDB, FAISS or Prometheus imports here)."""
