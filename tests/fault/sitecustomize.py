"""A fault for tests/test_ddp.py, kept out of the package: with this folder on PYTHONPATH,
the torchrun worker whose RANK is $GENPIPE_TEST_FAIL_RANK fails as it joins the process
group, as a rank whose host dies at start would; the others go on to their first
collective."""

import os

_rank = os.environ.get("RANK")
if _rank is not None and _rank == os.environ.get("GENPIPE_TEST_FAIL_RANK"):
    import torch.distributed as dist

    from genpipe.errors import TrainingError

    _join = dist.init_process_group

    def init_process_group(*args, **kwargs):
        _join(*args, **kwargs)
        raise TrainingError(f"rank {_rank}: failing as GENPIPE_TEST_FAIL_RANK asks")

    dist.init_process_group = init_process_group
