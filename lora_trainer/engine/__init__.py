"""The training loop and its small, independently testable helpers."""
