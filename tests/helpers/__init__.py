"""Factories shared by the tests: tiny HF checkpoints and a paged-batch harness."""
