"""Shared test helpers: tiny models and batches, synthetic data writers, the train_net driver,
the official reference bundle, and the tie-aware comparison of selections and detections."""
