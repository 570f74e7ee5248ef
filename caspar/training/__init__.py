"""Fitting one model, scoring it against its baselines, what it was fitted on."""
