"""Online training: fine-tuning from the stream (plain code) and the trainer process around it."""
