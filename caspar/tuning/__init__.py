"""The hyperparameter study on Ray: trials, their data, where the CPU went."""
