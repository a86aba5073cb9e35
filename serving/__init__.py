"""The serving core, without Kafka: the recommender (state, index, model per micro-batch) and the
models it serves (the content baseline, trained checkpoints with incremental user state)."""
