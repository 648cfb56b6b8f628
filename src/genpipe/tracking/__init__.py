"""MLflow tracking: the store (store.py: which, whether it works, bounded HTTP), lineage
(lineage.py: every tag, git, the DVC experiment) and the runs (runs.py: a training stage's
run, reopened by evaluate). Nothing is imported here, so a stage depends on the modules it
uses alone."""
