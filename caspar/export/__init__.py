"""What leaves a run: the MLflow model, the registry, SavedModel/TFLite, the Java files."""
