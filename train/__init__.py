"""Training stage: models, the training loop, metrics and run reports."""
