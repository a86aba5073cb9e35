"""Kafka wiring: record schemas, topics, the Faust app with its agent, tasks and log watch, the
worker process, replay, and readers of the topics. The serving core is in `serving/`, online
training in `training/`, local tooling in `local/` (docs/architecture.md)."""
