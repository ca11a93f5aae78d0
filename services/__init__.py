"""The running system: gateway, workers, predictor and the CLI."""
