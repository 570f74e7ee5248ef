"""Logs to rows: reading game logs, the features, the prepared dataset."""
