"""Local tooling: the noida-db broker, starting worker and trainer processes, the demo."""
