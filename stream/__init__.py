"""Stream wiring: topic schemas, the Faust app, replay, the local broker and benchmarks."""
