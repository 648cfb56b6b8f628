"""The registry and its champion gate, against a real `mlflow server` on 127.0.0.1 (sqlite
backend, served artifacts), with tiny models written as the pipeline writes them."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from genpipe.errors import RegistryError, TrackingError
from genpipe.gan.artifact import load_generator
from genpipe.gan.network import Generator
from genpipe.params.schema import Params
from genpipe.registry import aliases as registry_aliases
from genpipe.registry import register as registry
from genpipe.registry.gate import Policy
from genpipe.registry.register import Outputs, register
from genpipe.registry.versions import logged_model_id
from genpipe.tracking import lineage
from genpipe.tracking import store as tracking_store
from genpipe.tracking.recorded_run import RecordedRun
from genpipe.tracking.training_run import TrainingRun
from genpipe.weights import save_weights

from net import free_port

BIN = Path(sys.executable).parent
PARAMS = Params().model_dump(mode="json", by_alias=True)  # all of params.yaml: its defaults


def wait_until_up(url: str, proc: subprocess.Popen, what: str, seconds: float = 120) -> None:
    """Until `url` answers; a process that ends or a deadline that passes fails the test."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"{what} did not start")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real MLflow store on a temporary sqlite file, its artifacts beside it: the
    registry's decisions run against it in the fast suite, with no server process. Each
    test registers models of its own name prefix."""
    root = tmp_path_factory.mktemp("mlflow-store")
    cwd = os.getcwd()
    os.chdir(root)  # where the store's artifact root, ./mlruns, resolves
    try:
        yield f"sqlite:///{root}/mlflow.db"
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1: sqlite backend, artifacts served from a temp folder."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    wait_until_up(f"{uri}/health", proc, "mlflow server")
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


def gan_outputs(root: Path, uri: str, fid: float, backbone: str = "domain", seed: int = 0,
                run: bool = True, data_hash: str = "data-hash", netG: Generator | None = None,
                metrics: dict | None = None) -> Outputs:  # fmt: skip
    """A trained-looking GAN's DVC outputs under `root`, with its training run on `uri`:
    `netG` (else a fresh one from `seed`) and `metrics` (else `fid` beside a floor)."""
    if netG is None:
        torch.manual_seed(seed)
        netG = Generator(8, 1, z_dim=4, width=8)
    weights = root / "models/gan/weights"
    save_weights(netG, weights / "generator_ema.safetensors")
    config = {"model": "gan", "image_size": 8, "channels": 1, "generator": netG.config()}
    (weights / "config.json").write_text(json.dumps(config))
    reports = root / "reports/gan"
    reports.mkdir(parents=True, exist_ok=True)
    metrics = metrics or {"fid": fid, "floor": {"fid": 0.4}}
    (reports / "metrics.json").write_text(json.dumps(metrics))
    (reports / "train_log.csv").write_text("step,loss_d,loss_g\n5,1.2,0.7\n10,1.1,0.8\n")
    (root / "data/reference").mkdir(parents=True, exist_ok=True)
    (root / "data/reference/reference.json").write_text(json.dumps({"backbone": backbone}))
    record = root / "models/gan/mlflow_run.json"
    if run:
        with TrainingRun("gan", {"seed": seed}, "data-hash", "exp", record_path=record, uri=uri):
            pass
    else:  # a run id the server has never seen (another machine's store)
        record.write_text(json.dumps({"run_id": "f" * 32, "tracking_uri": "sqlite:///x.db"}))
    outputs = Outputs.of("gan", data_hash)
    return Outputs(**{k: (root / v if isinstance(v, Path) else v)
                      for k, v in vars(outputs).items() if k != "images"},
                   images=[])  # fmt: skip


def do_register(outputs: Outputs, uri: str, prefix: str, min_improvement: float = 0.01,
                force: bool = False, branch: str | None = None, score=None,
                noise_z: float = 0.0) -> dict:  # fmt: skip
    policy = Policy(min_improvement, force, branch, "main", score, noise_z)
    return register(outputs, PARAMS, prefix, policy, experiment="exp", uri=uri)


def aliases(uri: str, name: str) -> dict[str, int]:
    from mlflow import MlflowClient

    model = MlflowClient(uri).get_registered_model(name)
    return {alias: int(version) for alias, version in model.aliases.items()}


def test_better_version_becomes_champion_worse_one_challenger(store, tmp_path):
    first = do_register(gan_outputs(tmp_path / "a", store, fid=2.0), store, "t1")
    assert (first["version"], first["decision"]) == (1, "champion")
    better = do_register(gan_outputs(tmp_path / "b", store, fid=1.0, seed=1), store, "t1")
    assert (better["version"], better["decision"]) == (2, "champion")
    assert better["compared"] == {"version": 1, "value": 2.0, "std": None}
    worse = do_register(gan_outputs(tmp_path / "c", store, fid=1.5, seed=2), store, "t1")
    assert worse["decision"] == "challenger" and "not better" in worse["reason"]
    # within min_improvement of the champion is not better
    close = do_register(gan_outputs(tmp_path / "d", store, fid=0.995, seed=3), store, "t1")
    assert close["decision"] == "challenger"
    assert aliases(store, "t1-gan") == {"champion": 2, "previous-champion": 1, "challenger": 4}


@pytest.mark.slow
def test_the_same_model_scored_by_another_evaluation_draw_cannot_become_champion(server, tmp_path):
    """One generator (200 steps on sklearn's digits), scored by the evaluate stage's own
    function with the pixels as features under evaluation seeds 0 to 5: each seed is another
    draw of samples, which moves its FID by 1-2%. Seed 0's draw is registered first; each
    later draw as a new version, its weights nudged by 1e-7 so that the registry sees new
    bits. With register.noise_z 2 (the default) none becomes champion. With min_improvement
    alone (noise_z 0) the same draws promote one, so the noise margin keeps them out."""
    import copy
    import tempfile

    from genpipe.gan.evaluate import evaluate_gan
    from genpipe.gan.train import train_gan
    from genpipe.params.load import parse_params

    from builders import digits_split, pixel_reference, pixels

    cpu = torch.device("cpu")
    split = digits_split()
    params = parse_params({"gan": {"steps": 200, "width": 16, "z_dim": 16, "ema_bn_batches": 5},
                           "train": {"batch_size": 64}})  # fmt: skip
    reference = pixel_reference(split, params)
    with tempfile.TemporaryDirectory() as tmp:
        netG = train_gan(params, split.train, "draws", cpu, Path(tmp) / "checkpoint.pt",
                         Path(tmp) / "train_log.csv").ema.eval()  # fmt: skip

    def draw(seed: int) -> tuple[Generator, dict]:
        nudged = copy.deepcopy(netG)
        first = next(nudged.parameters())
        with torch.no_grad():
            first[(0,) * first.ndim] += 1e-7 * seed  # new bits, the same model
        metrics, _ = evaluate_gan(nudged, reference, pixels, params.evaluate, seed, cpu)
        return nudged, metrics

    draws = [draw(seed) for seed in range(6)]
    fids = [metrics["fid"] for _, metrics in draws]
    assert len(set(fids)) == 6 and all(metrics["fid_std"] > 0 for _, metrics in draws)
    for prefix, noise_z in (("n1", 2.0), ("n2", 0.0)):
        decisions = []
        for seed, (net, metrics) in enumerate(draws):
            outputs = gan_outputs(tmp_path / prefix / str(seed), server, 0.0, seed=seed,
                                  netG=net, metrics=metrics)  # fmt: skip
            decisions.append(do_register(outputs, server, prefix, noise_z=noise_z))
        assert [d["version"] for d in decisions] == [1, 2, 3, 4, 5, 6]
        promoted = [d["version"] for d in decisions[1:] if d["decision"] == "champion"]
        if noise_z:
            assert promoted == [], [d["reason"] for d in decisions]
            assert aliases(server, f"{prefix}-gan")["champion"] == 1
            better = [d for d in decisions[1:] if d["value"] < fids[0] * 0.99]
            assert better and all("noise margin" in d["reason"] for d in better)
        else:
            assert promoted, f"no draw beat seed 0's by 1%: {fids}"


def test_versions_of_another_backbone_are_not_compared(store, tmp_path):
    do_register(gan_outputs(tmp_path / "a", store, fid=2.0), store, "t2")
    other = gan_outputs(tmp_path / "b", store, fid=0.1, backbone="inception", seed=1)
    result = do_register(other, store, "t2")
    assert result["decision"] == "challenger" and "genpipe.backbone" in result["reason"]
    assert aliases(store, "t2-gan")["champion"] == 1
    forced = do_register(gan_outputs(tmp_path / "c", store, fid=0.2, backbone="inception",
                                     seed=2), store, "t2", force=True)  # fmt: skip
    assert forced["decision"] == "champion"


def test_register_force_promotes_worse_weights_on_the_same_data(store, tmp_path):
    """register.force: true promotes without comparing, on the same data and backbone too."""
    do_register(gan_outputs(tmp_path / "a", store, fid=2.0), store, "t2f")
    worse = do_register(gan_outputs(tmp_path / "b", store, fid=3.0, seed=1), store, "t2f",
                        force=True)  # fmt: skip
    assert worse["decision"] == "champion", worse
    assert worse["reason"].startswith("register.force: promoted without comparing (fid 3 vs")
    assert aliases(store, "t2f-gan") == {"champion": 2, "previous-champion": 1}


class Scores:
    """Stands in for registry.rescore.Scorer: the champion's FID on today's data, and the
    config.json of each weights directory it was given (they are the champion's own)."""

    def __init__(self, fid: float) -> None:
        self.fid, self.seen = fid, []

    def __call__(self, weights_dir: Path) -> dict:
        self.seen.append(json.loads((weights_dir / "config.json").read_text()))
        load_generator(weights_dir, torch.device("cpu"))  # the files load
        return {"fid": self.fid}


def test_new_data_is_compared_with_the_champion_scored_again_on_it(store, tmp_path):
    """Retrained on grown data: the champion (evaluated on the old data) is scored again on
    today's, and the better of the two by that measure becomes champion."""
    do_register(gan_outputs(tmp_path / "a", store, fid=2.0, data_hash="old"), store, "r1")
    without = do_register(gan_outputs(tmp_path / "b", store, fid=1.4, seed=1, data_hash="new"),
                          store, "r1")  # fmt: skip
    assert without["decision"] == "challenger" and "data.hash differ" in without["reason"]

    scores = Scores(fid=1.5)  # the champion, on the new data: worse than v3's 1.2
    better = do_register(gan_outputs(tmp_path / "c", store, fid=1.2, seed=2, data_hash="new"),
                         store, "r1", score=scores)  # fmt: skip
    assert better["decision"] == "champion", better["reason"]
    assert "re-scored on today's data (it had 2 on its own)" in better["reason"]
    assert better["compared"] == {"version": 1, "value": 1.5, "std": None, "rescored_from": {
        "value": 2.0, "data_hash": "old", "backbone": "domain"}}  # fmt: skip
    assert len(scores.seen) == 1 and scores.seen[0]["model"] == "gan"
    assert aliases(store, "r1-gan") == {"champion": 3, "previous-champion": 1,
                                          "challenger": 2}  # fmt: skip
    from mlflow import MlflowClient

    tags = MlflowClient(store).get_model_version("r1-gan", "3").tags
    assert json.loads(tags[lineage.TAG_COMPARED])["rescored_from"]["value"] == 2.0
    assert tags[lineage.TAG_DECISION] == "champion"

    # the same data as the champion now: no re-score
    worse = do_register(gan_outputs(tmp_path / "d", store, fid=1.3, seed=3, data_hash="new"),
                        store, "r1", score=scores)  # fmt: skip
    assert worse["decision"] == "challenger" and len(scores.seen) == 1


def test_a_champion_whose_files_are_gone_is_replaced_with_that_reason(store, tmp_path):
    do_register(gan_outputs(tmp_path / "a", store, fid=1.0, data_hash="old"), store, "r2")

    def lost(weights_dir: Path) -> dict:
        raise FileNotFoundError(f"{weights_dir}: the artifact store lost it")

    new = gan_outputs(tmp_path / "b", store, fid=5.0, seed=1, data_hash="new")
    result = do_register(new, store, "r2", score=lost)
    assert result["decision"] == "champion"
    assert "cannot be loaded" in result["reason"]
    assert "the artifact store lost it" in result["reason"]


def test_a_branch_registers_a_candidate_and_leaves_champion_and_challenger(store, tmp_path):
    do_register(gan_outputs(tmp_path / "a", store, fid=2.0), store, "r3")
    do_register(gan_outputs(tmp_path / "b", store, fid=3.0, seed=1), store, "r3")
    before = aliases(store, "r3-gan")
    assert before == {"champion": 1, "challenger": 2}
    outputs = gan_outputs(tmp_path / "c", store, fid=1.0, seed=2)
    pr = do_register(outputs, store, "r3", branch="feature/better-lr")
    assert pr["decision"] == "candidate" and pr["branch"] == "feature/better-lr"
    assert "on merge it would become champion (fid 1 vs champion v1's 2)" in pr["reason"]
    assert aliases(store, "r3-gan") == {**before, "candidate-feature-better-lr": 3}
    # the branch again: nothing more; merged, the default branch's register decides
    assert do_register(outputs, store, "r3", branch="feature/better-lr")["decision"] == (
        "already registered"
    )
    merged = do_register(outputs, store, "r3", branch="main")
    assert (merged["version"], merged["decision"]) == (3, "champion")
    assert aliases(store, "r3-gan")["champion"] == 3


def test_registering_a_run_twice_makes_one_version(store, tmp_path):
    outputs = gan_outputs(tmp_path, store, fid=1.0)
    first = do_register(outputs, store, "t3")
    again = do_register(outputs, store, "t3")
    assert again["version"] == first["version"] == 1
    assert again["decision"] == "already registered" and again["aliases"] == ["champion"]


def test_a_rerun_that_reproduces_the_weights_is_not_a_new_version(store, tmp_path):
    """Another run (a forced retraining, a --temp experiment) with bitwise-identical weights
    is the same model."""
    first = do_register(gan_outputs(tmp_path / "a", store, fid=1.0, seed=0), store, "t12")
    same = do_register(gan_outputs(tmp_path / "b", store, fid=1.0, seed=0), store, "t12")
    assert same["run_id"] != first["run_id"]
    assert (same["version"], same["decision"]) == (1, "already registered")
    other = do_register(gan_outputs(tmp_path / "c", store, fid=1.0, seed=1), store, "t12")
    assert other["version"] == 2


def test_a_failure_before_the_aliases_move_leaves_the_champion_and_is_finished_later(
    store, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    do_register(gan_outputs(tmp_path / "a", store, fid=2.0), store, "t9")
    better = gan_outputs(tmp_path / "b", store, fid=1.0, seed=1)

    def crash(*args, **kwargs):
        raise RuntimeError("the process dies here")

    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "set_registered_model_alias", crash)
        with pytest.raises(RuntimeError):
            do_register(better, store, "t9")
    # version 2 exists, but no alias points at it: the champion is still version 1
    assert aliases(store, "t9-gan") == {"champion": 1}
    assert len(MlflowClient(store).search_model_versions("name = 't9-gan'")) == 2
    # the rerun finishes the gate for that version rather than registering a third
    result = do_register(better, store, "t9")
    assert (result["version"], result["decision"]) == (2, "champion")
    assert aliases(store, "t9-gan") == {"champion": 2, "previous-champion": 1}

    # cut short after the aliases moved but before the decision was recorded: the champion
    # is not compared with itself (which would make it its own challenger)
    MlflowClient(store).delete_model_version_tag("t9-gan", "2", lineage.TAG_DECISION)
    again = do_register(better, store, "t9")
    assert (again["version"], again["decision"]) == (2, "champion")
    assert aliases(store, "t9-gan") == {"champion": 2, "previous-champion": 1}


def hand_set_champion(uri: str, name: str, version: int) -> str:
    """Strip the version of all its tags and set `champion` on it by hand, as in the UI;
    returns its run's id."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_model_version(name, str(version))
    for tag in found.tags:
        client.delete_model_version_tag(name, str(version), tag)
    client.delete_registered_model_alias(name, "champion")
    client.set_registered_model_alias(name, "champion", str(version))
    return found.run_id


def test_a_champion_set_by_hand_is_compared_on_its_runs_eval_metric(store, tmp_path):
    from mlflow import MlflowClient

    do_register(gan_outputs(tmp_path / "a", store, fid=2.0), store, "t13")
    run_id = hand_set_champion(store, "t13-gan", 1)
    MlflowClient(store).log_metric(run_id, "eval/fid", 2.0)  # as evaluate@gan logs
    worse = do_register(gan_outputs(tmp_path / "b", store, fid=3.0, seed=1), store, "t13")
    assert (worse["decision"], worse["compared"]) == ("challenger", {"version": 1, "value": 2.0,
                                                                     "std": None})  # fmt: skip
    assert "its run's eval/fid" in worse["reason"]
    better = do_register(gan_outputs(tmp_path / "c", store, fid=1.0, seed=2), store, "t13")
    assert better["decision"] == "champion"
    assert aliases(store, "t13-gan") == {"champion": 3, "previous-champion": 1, "challenger": 2}


def test_a_champion_set_by_hand_without_a_value_is_replaced(store, tmp_path):
    do_register(gan_outputs(tmp_path / "a", store, fid=1.0), store, "t14")
    hand_set_champion(store, "t14-gan", 1)  # its run has no eval/fid either
    result = do_register(gan_outputs(tmp_path / "b", store, fid=5.0, seed=1), store, "t14")
    assert (result["version"], result["decision"]) == (2, "champion")
    assert "replaced" in result["reason"]
    assert result["compared"] == {"version": 1, "value": None, "std": None}
    assert aliases(store, "t14-gan") == {"champion": 2, "previous-champion": 1}


def test_an_operators_rollback_of_champion_sticks(store, tmp_path):
    """An operator rolls champion back to a worse version (v3 has a problem no metric sees).
    The next register compares with the operator's champion and never moves it on its own:
    no "v1 beats champion v2" from reconcile, which repairs only a race."""
    from mlflow import MlflowClient

    do_register(gan_outputs(tmp_path / "a", store, fid=2.0), store, "o1")  # v1 champion
    do_register(gan_outputs(tmp_path / "b", store, fid=1.0, seed=1), store, "o1")  # v2
    assert aliases(store, "o1-gan")["champion"] == 2
    MlflowClient(store).set_registered_model_alias("o1-gan", "champion", "1")  # the rollback
    worse = do_register(gan_outputs(tmp_path / "c", store, fid=1.99, seed=2), store, "o1")
    assert worse["decision"] == "challenger" and worse["compared"]["version"] == 1
    assert aliases(store, "o1-gan")["champion"] == 1  # the operator's choice stands
    assert worse["aliases"] == ["challenger"]
    # a version that beats the operator's champion still becomes champion: the gate's rule
    better = do_register(gan_outputs(tmp_path / "d", store, fid=1.5, seed=3), store, "o1")
    assert better["decision"] == "champion" and better["aliases"] == ["champion"]
    assert aliases(store, "o1-gan")["champion"] == 4  # not v2, though v2's fid is lower


def test_a_champion_set_by_hand_on_a_version_without_a_run_stays_replaced(store, tmp_path):
    """A champion set by hand on a version with no run is replaced by the next register, and
    reconcile leaves it so: registry.json's decision and aliases agree."""
    from mlflow import MlflowClient

    client = MlflowClient(store)
    do_register(gan_outputs(tmp_path / "a", store, fid=1.0), store, "o2")  # v1, the best
    logged = client.create_logged_model(client.get_experiment_by_name("Default").experiment_id)
    bare = client.create_model_version("o2-gan", f"models:/{logged.model_id}",
                                       model_id=logged.model_id)  # v2: a model with no run
    client.set_registered_model_alias("o2-gan", "champion", bare.version)
    result = do_register(gan_outputs(tmp_path / "b", store, fid=3.0, seed=1), store, "o2")
    assert (result["version"], result["decision"]) == (3, "champion")
    assert result["decision"] in result["aliases"]
    assert aliases(store, "o2-gan")["champion"] == 3  # not moved on to v1's lower fid


def test_a_conflicting_write_is_retried(store, tmp_path, monkeypatch):
    """Another register writing the same model at once fails a call (a conflicting insert on
    the store): the pass is repeated, and finishes."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    monkeypatch.setattr(registry.time, "sleep", lambda seconds: None)
    set_alias = MlflowClient.set_registered_model_alias
    calls = []

    def conflict_once(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise MlflowException("UNIQUE constraint failed", error_code="INTERNAL_ERROR")
        return set_alias(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", conflict_once)
    result = do_register(gan_outputs(tmp_path, store, fid=1.0), store, "t11")
    assert (result["version"], result["decision"]) == (1, "champion") and len(calls) == 2


def test_rebuild_from_dvc_outputs_when_the_run_is_not_on_the_server(store, tmp_path):
    from mlflow import MlflowClient

    outputs = gan_outputs(tmp_path, store, fid=1.0, run=False)
    result = do_register(outputs, store, "t4")
    client = MlflowClient(store)
    run = client.get_run(result["run_id"])
    assert run.data.tags[lineage.TAG_SOURCE_RUN] == "f" * 32
    # where, and tagged as, the train stage would have put it
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "exp-gan"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.data.tags["genpipe.model"] == "gan" and run.data.tags["data.hash"] == "data-hash"
    assert run.data.tags["mlflow.source.type"] == "LOCAL"
    assert run.data.metrics["eval/fid"] == 1.0 and run.data.metrics["loss_d"] == 1.1
    assert run.data.params["seed"] == "0"
    # a second register finds the rebuilt run instead of rebuilding it
    assert do_register(outputs, store, "t4")["run_id"] == result["run_id"]
    # the version's logged model: READY, from the run, with the run's evaluation figures
    version = client.get_model_version("t4-gan", str(result["version"]))
    logged = client.get_logged_model(logged_model_id(version))
    assert str(logged.status).endswith("READY") and logged.source_run_id == result["run_id"]
    assert {m.key: m.value for m in logged.metrics} == {"eval/fid": 1.0}
    assert logged.params["seed"] == "0"


def test_a_version_is_registered_in_the_store_register_was_given(store, tmp_path):
    """Not in MLflow's process-wide store: an earlier set_tracking_uri (another store's run,
    in a process that registers to two) does not send the version elsewhere."""
    import mlflow

    outputs = gan_outputs(tmp_path / "a", store, fid=1.0)
    other = f"sqlite:///{tmp_path}/other.db"
    mlflow.set_tracking_uri(other)
    try:
        result = do_register(outputs, store, "t18")
    finally:
        mlflow.set_tracking_uri(store)
    assert (result["version"], result["decision"]) == (1, "champion")
    assert aliases(store, "t18-gan") == {"champion": 1}
    assert not (tmp_path / "other.db").exists()  # nothing went to the other store


@pytest.mark.integration
def test_champion_loads_and_generates_in_a_fresh_process(server, tmp_path):
    do_register(gan_outputs(tmp_path, server, fid=1.0), server, "t5")
    code = (
        "import mlflow, pandas as pd\n"
        "m = mlflow.pyfunc.load_model('models:/t5-gan@champion')\n"
        "x = m.predict(pd.DataFrame({'seed': [0, 1, 2]}))\n"
        "print(x.shape, x.dtype)\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": server}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(3, 1, 8, 8) uint8" in out.stdout


def test_lost_model_files_are_logged_again_or_the_champion_replaced(tmp_path, monkeypatch):
    """A store that lost its files (a restarted S3 stand-in, a lifecycle rule): register
    logs this very version's files again from the DVC-cached weights, and a champion whose
    files are gone and not here is replaced, with that reason."""
    import shutil

    import mlflow

    monkeypatch.chdir(tmp_path)  # the store's artifacts: ./mlruns
    store = f"sqlite:///{tmp_path}/mlflow.db"
    outputs = gan_outputs(tmp_path / "a", store, fid=2.0)
    assert do_register(outputs, store, "r5")["decision"] == "champion"

    def lose_files() -> None:
        lost = [d for d in (tmp_path / "mlruns").rglob("models/m-*/artifacts") if d.is_dir()]
        assert lost
        for directory in lost:
            shutil.rmtree(directory)

    lose_files()
    mlflow.set_tracking_uri(store)
    with pytest.raises(Exception, match="No such artifact|MLmodel"):
        mlflow.pyfunc.load_model("models:/r5-gan@champion")
    again = do_register(outputs, store, "r5")  # `dvc repro --force -s register@gan`
    assert again["decision"] == "already registered" and again["version"] == 1
    model = mlflow.pyfunc.load_model("models:/r5-gan@champion")  # repaired
    assert model.predict(pd.DataFrame({"seed": [0]})).shape == (1, 1, 8, 8)

    # the champion's files are gone and these weights are another model's: replaced
    lose_files()
    worse = do_register(gan_outputs(tmp_path / "b", store, fid=9.0, seed=1), store, "r5")
    assert (worse["version"], worse["decision"]) == (2, "champion")
    assert "champion v1 cannot be loaded (its files are gone" in worse["reason"]
    assert aliases(store, "r5-gan") == {"champion": 2, "previous-champion": 1}
    assert mlflow.pyfunc.load_model("models:/r5-gan@champion") is not None


def test_a_register_that_fails_after_logging_leaves_no_orphan_model(store, tmp_path, monkeypatch):
    """The store fails between logging the model and registering it (PostgreSQL down, say):
    the next register registers that logged model rather than logging another."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    outputs = gan_outputs(tmp_path / "a", store, fid=1.0)

    def down(*args, **kwargs):
        raise MlflowException("connection refused", error_code="PERMISSION_DENIED")

    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "create_model_version", down)
        with pytest.raises(RegistryError, match="connection refused"):
            do_register(outputs, store, "r6")
    result = do_register(outputs, store, "r6")
    assert (result["version"], result["decision"]) == (1, "champion")
    client = MlflowClient(store)
    run = client.get_run(result["run_id"])
    logged = client.search_logged_models([run.info.experiment_id],
                                         f"source_run_id = '{run.info.run_id}'")  # fmt: skip
    assert len(logged) == 1
    assert client.get_model_version("r6-gan", "1").source == f"models:/{logged[0].model_id}"


@pytest.mark.parametrize("stop", ["SIGTERM", "an error", "SIGINT"])
def test_a_register_stopped_while_logging_leaves_the_training_run_finished(
    store, tmp_path, monkeypatch, stop
):
    """register logs the model with the training run as its source, without reopening the
    run; a signal or an error while it logs must not mark the training FAILED or KILLED:
    it ended FINISHED, and stays so."""
    import mlflow.pyfunc as pyfunc  # the module itself: mlflow.pyfunc may be a lazy loader
    from mlflow import MlflowClient

    from genpipe.stage import Terminated

    outputs = gan_outputs(tmp_path / "a", store, fid=1.0)
    run_id = json.loads(outputs.record.read_text())["run_id"]
    assert MlflowClient(store).get_run(run_id).info.status == "FINISHED"
    raised = {"SIGTERM": Terminated(), "SIGINT": KeyboardInterrupt(),
              "an error": OSError(28, "No space left on device")}[stop]  # fmt: skip

    def stopped(*args, **kwargs):
        raise raised

    monkeypatch.setattr(pyfunc, "save_model", stopped)
    with pytest.raises((KeyboardInterrupt, OSError, RegistryError)):
        do_register(outputs, store, f"r7-{stop.split()[-1].lower()}")
    client = MlflowClient(store)
    assert client.get_run(run_id).info.status == "FINISHED"
    # the model it began to log is marked FAILED, not left PENDING
    run = client.get_run(run_id)
    logged = client.search_logged_models([run.info.experiment_id],
                                         f"source_run_id = '{run_id}'")  # fmt: skip
    assert [str(m.status).split(".")[-1] for m in logged] == ["FAILED"]


@pytest.mark.parametrize("bad", ["a pickle", "another network", "a truncated file"])
def test_register_refuses_weights_it_cannot_load(tmp_path, monkeypatch, bad):
    """`dvc repro -f -s register@gan` with a pickle in generator_ema.safetensors: refused in
    one line before the registry is touched, so load_model never meets it."""
    import pickle

    from genpipe.autoencoder.network import AutoEncoder
    from genpipe.weights import WeightsError

    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    outputs = gan_outputs(tmp_path / "a", store, fid=1.0)
    weights = outputs.weights / "generator_ema.safetensors"
    if bad == "a pickle":
        weights.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    elif bad == "another network":
        save_weights(AutoEncoder(8, 1, latent_dim=3, width=4), weights)
    else:
        weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(WeightsError) as excinfo:
        do_register(outputs, store, "w1")
    assert "\n" not in str(excinfo.value) and str(weights) in str(excinfo.value)
    assert not (tmp_path / "mlflow.db").exists() or "w1-gan" not in (
        tmp_path / "mlflow.db").read_bytes().decode("latin-1")  # fmt: skip


README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.integration
def test_the_readmes_rest_payload_gets_images_from_the_served_champion(server, tmp_path):
    """`mlflow models serve` as the README runs it (the environment's bin first on PATH),
    and the README's own curl payload, posted to /invocations."""
    import re

    import mlflow

    do_register(gan_outputs(tmp_path, server, fid=1.0), server, "r4")
    payload = re.search(r"-d '(\{\"dataframe_split\".*?)'", README.read_text())[1]
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "GENPIPE_SERVE_MAX_IMAGES": "50",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    serve = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", "models:/r4-gan@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def post(body: str) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body.encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def seeds(n: int) -> str:
        return json.dumps({"dataframe_split": {"columns": ["seed"],
                                               "data": [[i] for i in range(n)]}})  # fmt: skip

    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", serve, "mlflow models serve")
        status, answer = post(payload)
        images = np.asarray(answer["predictions"])
        too_many = post(seeds(51))
        empty = post(json.dumps({"dataframe_split": {"columns": ["seed"], "data": []}}))
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    assert status == 200
    assert images.shape == (2, 1, 8, 8) and images.min() >= 0 and images.max() <= 255
    # a request over the cap: 400, naming the cap and the setting
    assert too_many[0] == 400
    assert "request: expected at most 50 images ($GENPIPE_SERVE_MAX_IMAGES); got 51" in (
        too_many[1]["message"])  # fmt: skip
    assert empty == (200, {"predictions": []})  # an empty request: an empty result
    mlflow.set_tracking_uri(server)
    model = mlflow.pyfunc.load_model("models:/r4-gan@champion")
    expected = model.predict(pd.DataFrame({"seed": [0, 1]}))
    np.testing.assert_array_equal(images, expected)  # the same images as in-process


REGISTER_SCRIPT = (
    "import sys, json\n"
    "from pathlib import Path\n"
    "from genpipe.params.schema import Params\n"
    "from genpipe.registry.gate import Policy\n"
    "from genpipe.registry.register import Outputs, register\n"
    "root = Path(sys.argv[1])\n"
    "o = Outputs.of('gan', 'data-hash')\n"
    "o = Outputs(**{k: (root / v if isinstance(v, Path) else v)"
    " for k, v in vars(o).items() if k != 'images'}, images=[])\n"
    "params = Params().model_dump(mode='json', by_alias=True)\n"
    "policy = Policy(0.01, False, None, 'main')\n"
    "r = register(o, params, sys.argv[3], policy, 'exp', uri=sys.argv[2])\n"
    "print(json.dumps(r))\n"
)


def register_at_once(roots: list[Path], server: str, prefix: str) -> list[dict]:
    """register of each root's outputs, each in its own process, all started at once."""
    procs = [subprocess.Popen([sys.executable, "-c", REGISTER_SCRIPT, str(root), server, prefix],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for root in roots]  # fmt: skip
    results = [p.communicate(timeout=300) for p in procs]
    # the failing process's last lines name the call and the error (pytest cuts long reprs)
    assert all(p.returncode == 0 for p in procs), "\n".join(
        line for _, err in results for line in err.strip().splitlines()[-3:]
    )
    return [json.loads(out.splitlines()[-1]) for out, _ in results]


@pytest.mark.integration
def test_two_register_processes_of_the_same_weights_at_once_make_one_version(server, tmp_path):
    """Two CI workspaces, each with its own training run of the same weights (bitwise), register
    at once against a fresh server: one version, champion, named by both records."""
    from mlflow import MlflowClient

    roots = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    for root in roots:
        gan_outputs(root, server, fid=1.0, seed=0)  # the same weights, three runs
    records = register_at_once(roots, server, "g1")
    versions = MlflowClient(server).search_model_versions("name = 'g1-gan'")
    assert len(versions) == 1, [(v.version, v.run_id) for v in versions]
    assert {r["version"] for r in records} == {int(versions[0].version)}
    assert aliases(server, "g1-gan") == {"champion": int(versions[0].version)}
    assert all(r["decision"] in ("champion", "already registered") for r in records)


def test_a_race_whose_promotions_were_recorded_in_the_other_order_is_repaired(store, tmp_path):
    """Two registers judged against the same champion each record their promotion, then set
    the alias: the worse one's alias write can come last while the better one's record
    does. Reconcile still knows the race by TAG_AGAINST and moves champion to the better."""
    from mlflow import MlflowClient

    from genpipe.registry import history

    client = MlflowClient(store)
    first = do_register(gan_outputs(tmp_path / "a", store, fid=2.0), store, "t20")  # v1
    better = do_register(gan_outputs(tmp_path / "b", store, fid=1.0, seed=1), store, "t20")
    assert (first["version"], better["version"]) == (1, 2)
    # the state that interleaving leaves: v1 and v2 judged against no champion at once, v1's
    # promotion recorded first, v2's next, and v1's alias write the last
    judged = json.dumps({"champion": None, "changes": 0, "decision": "champion"}, sort_keys=True)
    for version in ("1", "2"):
        client.set_model_version_tag("t20-gan", version, lineage.TAG_AGAINST, judged)
    for key in [k for k in client.get_registered_model("t20-gan").tags
                if k.startswith(history.TAG_PREFIX)]:  # fmt: skip
        client.delete_registered_model_tag("t20-gan", key)
    for version in (1, 2):
        history.record(client, "t20-gan", [history.change("champion", version, None, "race",
                                                          "fid", {}, "main")], None)  # fmt: skip
    client.delete_registered_model_alias("t20-gan", "previous-champion")
    client.set_registered_model_alias("t20-gan", "champion", "1")
    policy = Policy(0.01, False, None, "main")
    moved = registry_aliases.reconcile(client, "t20-gan", "fid", policy, tmp_path / "h.jsonl")
    assert moved[-1] == ("champion", 2) and aliases(store, "t20-gan")["champion"] == 2

    # an operator's rollback is no race: the last promotion's version judged otherwise
    client.set_model_version_tag("t20-gan", "2", lineage.TAG_AGAINST, judged.replace("0", "1"))
    client.set_registered_model_alias("t20-gan", "champion", "1")
    assert registry_aliases.reconcile(client, "t20-gan", "fid", policy, tmp_path / "h.jsonl") == ()
    assert aliases(store, "t20-gan")["champion"] == 1


@pytest.mark.integration
def test_two_register_processes_at_once_leave_one_champion(server, tmp_path):
    roots = [tmp_path / "a", tmp_path / "b"]
    for i, root in enumerate(roots):
        gan_outputs(root, server, fid=1.0 + i, seed=i)
    records = {r["value"]: r for r in register_at_once(roots, server, "t6")}
    assert sorted(records) == [1.0, 2.0]
    # one champion, and it is the better version, whichever process wrote last
    assert aliases(server, "t6-gan")["champion"] == records[1.0]["version"]


@pytest.mark.integration
def test_server_down_is_a_clear_error_and_changes_nothing(tmp_path, server):
    outputs = gan_outputs(tmp_path, server, fid=1.0)
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingError, match="unreachable"):
        do_register(outputs, down, "t7")


def test_missing_metrics_are_named(tmp_path, store):
    outputs = gan_outputs(tmp_path, store, fid=1.0)
    outputs.metrics.unlink()
    with pytest.raises(RegistryError, match=r"metrics.json: expected the evaluate stage"):
        do_register(outputs, store, "t8")


@pytest.mark.parametrize(
    ("output", "text", "expected"),
    [("metrics", "[1.0]", "metrics.json: expected the evaluate stage's metrics, a JSON "
                          "object; found a JSON list"),
     ("record", '{"run_id": "x\' OR 1=1"}', "mlflow_run.json: expected the train stage's "
                                             "run record, whose run_id is 32 hex digits")],
)  # fmt: skip
def test_outputs_edited_by_hand_are_one_line(tmp_path, store, output, text, expected):
    outputs = gan_outputs(tmp_path, store, fid=1.0)
    getattr(outputs, output).write_text(text)
    with pytest.raises(RegistryError) as excinfo:
        do_register(outputs, store, "t19")
    assert expected in str(excinfo.value) and "\n" not in str(excinfo.value)


ARTIFACTS = Path(__file__).resolve().parents[1] / ".test-artifacts"  # git-ignored


@pytest.mark.slow
def test_mlflow_ui_opens_in_model_training_and_shows_runs_datasets_and_aliases(
    server, tmp_path, monkeypatch
):
    """The pages genpipe links to, rendered by headless Chromium (Debian's chromium and
    chromium-driver: nothing is downloaded) in a fresh browser: the model-training view,
    the runs by their readable names, a run's dataset, a comparison of two GAN runs, and the
    registered model's aliases and history. The screenshots go to .test-artifacts/ui/."""
    import shutil

    from mlflow import MlflowClient
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    from genpipe.tracking.datasets import data_input
    from genpipe.tracking.store import ui_url

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    names = ["ui-first", "ui-second"]  # DVC experiment names: runs are named gan-<sha>-<name>
    info = {"num_classes": 10, "shape": [1797, 1, 8, 8], "counts": {"train": 1437, "test": 360}}
    test_split = data_input({"source": "digits"}, info, "0123456789abcdef" * 2 + ".dir", "test")
    run_ids = []
    for i, name in enumerate(names):
        monkeypatch.setenv("DVC_EXP_NAME", name)
        outputs = gan_outputs(tmp_path / name, server, fid=2.0 - i, seed=i)
        evaluation = RecordedRun(outputs.record, uri=server).open()  # as evaluate@gan logs
        evaluation.log({"fid": 2.0 - i}, [], inputs=[test_split])
        run_ids.append(do_register(outputs, server, "t10")["run_id"])
    experiment = MlflowClient(server).get_experiment_by_name("exp-gan").experiment_id
    shots = ARTIFACTS / "ui"
    shots.mkdir(parents=True, exist_ok=True)

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1600,1000"):  # fmt: skip
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver), options=options)  # a fresh profile

    def page(route: str, shown: str, shot: str) -> str:
        """The page's text once `shown` is in it (it renders with JavaScript), screenshot."""
        browser.get(ui_url(server, route))
        with contextlib.suppress(TimeoutException):
            WebDriverWait(browser, 90).until(lambda b: shown in b.find_element(
                "tag name", "body").text)  # fmt: skip
        browser.save_screenshot(str(shots / f"{shot}.png"))
        return browser.find_element("tag name", "body").text

    try:
        runs = page(f"experiments/{experiment}/runs", names[1], "runs")
        assert all(f"-{name}" in runs for name in names), runs[:500]
        # the model-training view: its sidebar, not the GenAI one's judges and prompts
        assert "Model registry" in runs and "Judges" not in runs, runs[:500]

        run = page(f"experiments/{experiment}/runs/{run_ids[1]}", "digits (test)", "run")
        assert "digits (test)" in run and "Evaluation" in run, run[:1500]

        ids = ",".join(f'"{run_id}"' for run_id in run_ids)
        compare = page(f'compare-runs?runs=[{ids}]&experiments=["{experiment}"]', "eval/fid",
                       "compare")  # fmt: skip
        assert "eval/fid" in compare and "seed" in compare, compare[:500]

        model = page("models/t10-gan", "@ champion", "model")
        assert "@ champion" in model and "@ previous-champion" in model, model[:1500]
        assert "genpipe.history." in model, model[:1500]  # the alias history, as tags
    finally:
        browser.quit()
    print(f"screenshots in {shots}")


# --- what goes wrong ---------------------------------------------------------------------------


def test_weights_replaced_under_the_same_run_get_a_new_version(store, tmp_path):
    """The run id alone does not make a version: its weights' hash must match too."""
    outputs = gan_outputs(tmp_path, store, fid=2.0)
    first = do_register(outputs, store, "t15")
    torch.manual_seed(1)  # other weights, the same mlflow_run.json
    save_weights(Generator(8, 1, z_dim=4, width=8), outputs.weights / "generator_ema.safetensors")
    outputs.metrics.write_text(json.dumps({"fid": 1.0}))
    second = do_register(outputs, store, "t15")
    assert second["run_id"] == first["run_id"]
    assert (second["version"], second["decision"]) == (2, "champion")
    again = do_register(outputs, store, "t15")
    assert (again["version"], again["decision"]) == (2, "already registered")


def test_corrupt_mlflow_db_in_register_is_one_line(tmp_path, monkeypatch):
    outputs = gan_outputs(tmp_path, "unused", fid=1.0, run=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlflow.db").write_bytes(b"\x00garbage, not sqlite" * 1000)
    with pytest.raises(TrackingError) as excinfo:
        do_register(outputs, "sqlite:///mlflow.db", "t16")
    assert "\n" not in str(excinfo.value)
    assert "mlflow.db is not a usable SQLite database" in str(excinfo.value)
    assert "`mv mlflow.db mlflow.db.corrupt`" in str(excinfo.value)


@pytest.mark.integration  # about 13 s: MLflow's own retries, at genpipe's bounds
def test_server_whose_api_fails_fails_register_within_seconds(http_server, tmp_path,
                                                              monkeypatch):  # fmt: skip
    for key in tracking_store.HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    http_server.route("/health", (200, b"OK"))
    http_server.route("/api/*", (500, b'{"error_code": "INTERNAL_ERROR", "message": "boom"}'))
    outputs = gan_outputs(tmp_path, "unused", fid=1.0, run=False)
    start = time.perf_counter()
    with pytest.raises(RegistryError) as excinfo:
        do_register(outputs, http_server.url, "t17")
    seconds = time.perf_counter() - start
    print(f"broken API: register failed in {seconds:.1f} s")
    assert "\n" not in str(excinfo.value) and "could not register t17-gan" in str(excinfo.value)
    assert seconds < 60


def test_a_served_conditional_gan_keeps_each_seeds_image_and_takes_labels(tmp_path):
    """Without a "label" column each seed draws its own class, so a seed is one image
    wherever it sits in a request; with one, the class is the caller's."""
    from types import SimpleNamespace

    import pandas as pd

    from genpipe.serving import GenpipeModel

    torch.manual_seed(0)
    netG = Generator(8, 1, z_dim=4, width=8, class_weights=[0.2, 0.3, 0.5])
    weights = tmp_path / "weights"
    save_weights(netG, weights / "generator_ema.safetensors")
    config = {"model": "gan", "image_size": 8, "channels": 1, "generator": netG.config()}
    (weights / "config.json").write_text(json.dumps(config))
    model = GenpipeModel()
    model.load_context(SimpleNamespace(artifacts={"weights": str(weights)}))

    def predict(**columns):
        return model.predict(None, pd.DataFrame(columns))

    a, b = predict(seed=[5, 7, 9]), predict(seed=[9, 5])
    assert (a[0] == b[1]).all() and (a[2] == b[0]).all()
    by_label = predict(seed=[5, 5, 5], label=[0, 1, 2])
    assert len({x.tobytes() for x in by_label}) == 3  # the label changes the image
    assert any((a[0] == x).all() for x in by_label)  # seed 5's own class is one of them
    from mlflow.exceptions import MlflowException

    for bad, found in (([0, 3], "got 3"), ([-1, 0], "got -1"), ([0.5, 1.0], "got 0.5")):
        with pytest.raises(MlflowException, match=f"^label: expected class indices 0..2; {found}"):
            predict(seed=[1, 2], label=bad)


def served(tmp_path, monkeypatch, max_images: str | None = None):
    """A served GAN (serving.GenpipeModel, loaded as `mlflow models serve` loads it) whose
    network records the size of each batch it is called with."""
    from types import SimpleNamespace

    from genpipe import serving

    if max_images is not None:
        monkeypatch.setenv(serving.MAX_IMAGES_ENV, max_images)
    torch.manual_seed(0)
    netG = Generator(8, 1, z_dim=4, width=8)
    weights = tmp_path / "weights"
    save_weights(netG, weights / "generator_ema.safetensors")
    config = {"model": "gan", "image_size": 8, "channels": 1, "generator": netG.config()}
    (weights / "config.json").write_text(json.dumps(config))
    model = serving.GenpipeModel()
    model.load_context(SimpleNamespace(artifacts={"weights": str(weights)}))
    model.batches = []
    model.net.register_forward_hook(lambda m, args, out: model.batches.append(len(args[0])))
    return model


def test_a_served_request_runs_in_bounded_batches_with_each_seeds_image(tmp_path, monkeypatch):
    from genpipe import serving

    model = served(tmp_path, monkeypatch)
    monkeypatch.setattr(serving, "BATCH", 64)
    many = model.predict(None, pd.DataFrame({"seed": np.arange(200)}))
    assert many.shape == (200, 1, 8, 8) and many.dtype == np.uint8
    assert model.batches == [64, 64, 64, 8]  # never the whole request at once
    for seed in (0, 63, 64, 199):  # a seed's image, wherever it sits
        alone = model.predict(None, pd.DataFrame({"seed": [seed]}))
        np.testing.assert_array_equal(alone[0], many[seed])


def test_a_served_request_over_the_cap_is_refused_and_an_empty_one_is_empty(tmp_path,
                                                                         monkeypatch):  # fmt: skip
    from mlflow.exceptions import MlflowException

    from genpipe import serving

    model = served(tmp_path, monkeypatch)
    assert model.max_images == serving.MAX_IMAGES == 1024  # the README's default
    with pytest.raises(MlflowException, match=r"^request: expected at most 1024 images "
                       r"\(\$GENPIPE_SERVE_MAX_IMAGES\); got 1025$"):  # fmt: skip
        model.predict(None, pd.DataFrame({"seed": np.arange(1025)}))
    assert model.batches == []  # refused before any work
    empty = model.predict(None, pd.DataFrame({"seed": np.array([], dtype=np.int64)}))
    assert empty.shape == (0, 1, 8, 8)
    assert served(tmp_path / "b", monkeypatch, "5").max_images == 5
    for bad in ("0", "-3", "lots", "1e3"):
        with pytest.raises(ValueError, match=f"^GENPIPE_SERVE_MAX_IMAGES: expected a positive "
                           f"integer; got '{bad}'$"):  # fmt: skip
            served(tmp_path / bad, monkeypatch, bad)


def test_a_served_autoencoder_reconstructs_in_batches_and_an_empty_input(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from genpipe import serving
    from genpipe.autoencoder.network import AutoEncoder

    torch.manual_seed(0)
    net = AutoEncoder(8, 1, latent_dim=3, width=4)
    weights = tmp_path / "weights"
    save_weights(net, weights / "autoencoder.safetensors")
    config = {"model": "autoencoder", "image_size": 8, "channels": 1,
              "autoencoder": net.config()}  # fmt: skip
    (weights / "config.json").write_text(json.dumps(config))
    model = serving.GenpipeModel()
    model.load_context(SimpleNamespace(artifacts={"weights": str(weights)}))
    monkeypatch.setattr(serving, "BATCH", 16)
    images = np.random.default_rng(0).integers(0, 256, (40, 1, 8, 8), dtype=np.uint8)
    out = model.predict(None, images)
    assert out.shape == (40, 1, 8, 8)
    np.testing.assert_array_equal(out[20:], model.predict(None, images[20:]))
    assert model.predict(None, images[:0]).shape == (0, 1, 8, 8)


# --- the alias history --------------------------------------------------------------------


class FakeRegistry:
    """The registry calls _set_aliases makes, in memory."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.tags: dict[str, str] = {}

    def get_registered_model(self, name):
        return SimpleNamespace(aliases=dict(self.aliases), tags=dict(self.tags))

    def set_registered_model_alias(self, name, alias, version):
        self.aliases[alias] = version

    def set_registered_model_tag(self, name, key, value):
        self.tags[key] = value


def test_the_history_grows_by_one_entry_per_alias_change(tmp_path):
    from genpipe.registry import history

    client, path = FakeRegistry(), tmp_path / "reports/gan/registry_history.jsonl"

    def move(aliases, reason, values):
        why = registry_aliases.Why(reason, "fid", values, "main", path)
        registry_aliases.set_aliases(client, "m-gan", aliases, why)
        return history.read(client, "m-gan")

    assert move((("champion", 1),), "no champion yet", {1: 2.0})[-1].previous is None
    promoted = move((("previous-champion", 1), ("champion", 2)), "beats v1", {1: 2.0, 2: 1.5})
    assert len(promoted) == 3
    last = promoted[-1]
    assert (last.alias, last.version, last.previous, last.reason) == ("champion", 2, 1, "beats v1")
    assert (last.value, last.previous_value, last.branch) == (1.5, 2.0, "main")
    assert len(move((("champion", 2),), "already champion", {})) == 3  # nothing moved
    assert len(move((("challenger", 3),), "worse", {3: 1.9})) == 4
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["alias"], e["version"]) for e in lines] == [
        ("champion", 1),
        ("previous-champion", 1),
        ("champion", 2),
        ("challenger", 3),
    ]
    assert "v2" in history.table(history.read(client, "m-gan"))


@pytest.mark.integration
def test_registry_history_prints_each_alias_change_register_made(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    for i, fid in enumerate((2.0, 1.0, 1.5)):
        do_register(gan_outputs(tmp_path / str(i), store, fid=fid, seed=i), store, "h1")
    result = subprocess.run([str(BIN / "genpipe"), "registry", "history", "h1-gan", "--json"],
                            capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "MLFLOW_TRACKING_URI": store})  # fmt: skip
    assert result.returncode == 0, result.stderr
    changes = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(c["alias"], c["version"], c["previous"]) for c in changes] == [
        ("champion", 1, None), ("previous-champion", 1, None), ("champion", 2, 1),
        ("challenger", 3, None)]  # fmt: skip
    assert changes[2]["value"] == 1.0 and changes[2]["previous_value"] == 2.0
    missing = subprocess.run([str(BIN / "genpipe"), "registry", "history", "nope"],
                             capture_output=True, text=True, cwd=tmp_path,
                             env={**os.environ, "MLFLOW_TRACKING_URI": store})  # fmt: skip
    assert missing.returncode == 1
    assert missing.stderr.strip() == (f"error: registered model 'nope': expected it in {store}; "
                                      "found no such model")  # fmt: skip


@pytest.mark.integration
def test_registry_check_finds_a_deleted_version_and_repair_registers_again(
    tmp_path, monkeypatch, capsys
):
    """The registry is outside DVC's view: a model deleted in the MLflow UI leaves `dvc repro`
    up to date. `genpipe registry check` (which `make run` runs) sees it; --repair runs
    register@<model>'s script again, outside DVC, so dvc.lock is left as it is."""
    from mlflow import MlflowClient

    from genpipe.cli import main
    from genpipe.registry import check as checking

    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    (tmp_path / "params.yaml").write_text("models: [gan]\n")
    record = do_register(gan_outputs(tmp_path, store, fid=1.0), store, "c1")
    (tmp_path / "reports/gan/registry.json").write_text(json.dumps(record))
    assert [f.problem for f in checking.check(["gan", "autoencoder"])] == [None]
    # the weights changed since (a retraining that register has not run for)
    (tmp_path / "models/gan/weights/config.json").write_text("{}")
    assert "holds other weights than" in checking.check(["gan"])[0].problem
    gan_outputs(tmp_path, store, fid=1.0)  # the weights back
    MlflowClient(store).delete_registered_model("c1-gan")
    capsys.readouterr()  # MLflow's own lines so far
    assert checking.check(["gan"])[0].problem == (
        f"registry.json names c1-gan v1, which the registry at {store} does not hold")
    with pytest.raises(SystemExit) as excinfo:
        main(["registry", "check"])
    assert excinfo.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == ("error: registry check: 1 model(s) not in the registry as registry.json says "
                   "(gan); run `genpipe registry check --repair` to register them again")
    # a stand-in for the register stage's script: what it was given, and how it ends
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    monkeypatch.setattr(checking.paths, "PIPELINE", scripts)
    (scripts / "register.py").write_text(
        "import sys, pathlib\n"
        "pathlib.Path('ran.txt').write_text(' '.join(sys.argv[1:]))\n"
        "print('INFO genpipe: registering', file=sys.stderr)\n")  # fmt: skip
    main(["registry", "check", "--repair"])  # returns: the repair succeeded
    assert (tmp_path / "ran.txt").read_text() == "gan"  # the script itself, not `dvc repro`
    assert "INFO genpipe: registering" in capsys.readouterr().err  # its log, passed on

    (scripts / "register.py").write_text(
        "import sys\nprint('error: the server is down', file=sys.stderr)\nsys.exit(1)\n")
    with pytest.raises(SystemExit) as excinfo:
        main(["registry", "check", "--repair"])
    assert excinfo.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: register@gan: expected the model registered again; the server is down")


@pytest.mark.integration
def test_genpipe_ui_serves_the_projects_store_and_prints_the_model_training_link(tmp_path):
    import signal

    port = free_port()
    store = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.Popen([str(BIN / "genpipe"), "ui", "--port", str(port)], cwd=tmp_path,
                            env={**os.environ, "MLFLOW_TRACKING_URI": store},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", proc, "genpipe ui")
        assert (tmp_path / "mlflow.db").is_file()  # this store, not another
    finally:
        os.kill(proc.pid, signal.SIGINT)  # stops `mlflow ui` and its workers
        out, _ = proc.communicate(timeout=60)
    link = f"http://127.0.0.1:{port}/#/experiments?workflowType=machine_learning"
    assert out.splitlines()[0] == f"MLflow UI on {store}: open {link}  (Ctrl-C stops it)"
    assert proc.returncode == 0 and "error:" not in out and "Traceback" not in out
