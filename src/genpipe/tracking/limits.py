"""MLflow's size limits where genpipe cuts a value to fit them (mlflow.utils.validation):
one home, held against the installed MLflow's own by tests/test_tracking.py. A tag's
5000 characters is the smallest limit of the servers genpipe works with."""

PARAM_VALUE_MAX = 6000  # a param's value (MAX_PARAM_VAL_LENGTH)
TAG_VALUE_MAX = 5000  # a run's or a model version's tag value (MAX_TAG_VAL_LENGTH: 8000 now)
DATASET_DIGEST_MAX = 36  # a dataset's digest (MAX_DATASET_DIGEST_SIZE)
