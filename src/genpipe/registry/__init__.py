"""The MLflow Model Registry side of the pipeline. `gate` decides, purely, which aliases a
new version takes; `register` runs the register stage's passes: `versions` (one version per
weights, the logged models), `champion` (what the gate reads, the re-score of `rescore`),
`aliases` (the writes, the race repair) and `history` (every alias change). `check` finds
what the registry lost outside DVC's view."""
