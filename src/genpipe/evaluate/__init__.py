"""The reference stage and the evaluate stages: one module per model, as in train/."""
