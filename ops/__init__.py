"""Operations adapters: Prometheus metrics and their exporter."""
