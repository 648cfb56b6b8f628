"""params.yaml: its schema (schema.py), the networks' config.json schemas (configs.py),
reading it (load.py), the rules that span keys (rules.py) and the one-line errors
(messages.py). Nothing is imported here, so a stage depends on the modules it uses alone."""
