"""The MLflow Model Registry side of the pipeline: `gate` decides, purely, which aliases a
new version takes; `mlflow` registers the version and applies the decision."""
