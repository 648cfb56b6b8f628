"""MLflow tracking: the store (store.py: which, whether it works, bounded HTTP), lineage
(lineage.py: every tag, git, the DVC experiment, what a run logs), the experiments, a
training stage's run (training_run.py) and the evaluate stage's (recorded_run.py), the
run page (describe.py), params and metrics as MLflow takes them (flatten.py, limits.py),
runs a killed process left (orphans.py), the datasets a run used, and a run rebuilt from
the DVC outputs (rebuild.py). Nothing is imported here, so a stage depends on the modules
it uses alone."""
