"""End to end: `dvc repro` in a temporary copy of the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from genpipe import yamlio

from builders import write_png
from net import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the environment's dvc, and the `python` stages call

pytestmark = pytest.mark.slow


TINY_TRAINING = {
    "train": {"batch_size": 16, "checkpoint_every": 10, "log_every": 5},
    "gan": {"steps": 10, "width": 8, "z_dim": 8},
    "autoencoder": {"steps": 10, "width": 8, "latent_dim": 4},
    "evaluate": {
        "kid_subsets": 5,
        "domain": {"steps": 100, "width": 8, "feature_dim": 16, "min_accuracy": 0.5},
    },
}
ALL_STAGES = [
    "params", "fetch", "validate", "reference", "train@gan", "train@autoencoder",
    "evaluate@gan", "evaluate@autoencoder", "register@gan", "register@autoencoder",
]  # fmt: skip


def sh(*args: str, cwd: Path, check: bool = True, tracking_uri: str | None = None
       ) -> subprocess.CompletedProcess:  # fmt: skip
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "GX_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
           "MLFLOW_TRACKING_URI": tracking_uri or f"sqlite:///{cwd}/mlflow.db"}  # fmt: skip
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def stages_run(output: str) -> list[str]:
    """The stages a `dvc repro` ran (or began: a failed one too), from what it printed
    ("Running stage 'train@gan':"): what a person reads in the log."""
    return [line.split("'")[1] for line in output.splitlines()
            if line.startswith("Running stage '")]  # fmt: skip


def ran(result: subprocess.CompletedProcess) -> list[str]:
    """The stages `dvc repro` ran, from its output."""
    return stages_run(result.stdout)


@pytest.fixture
def project(tmp_path) -> Path:
    """The repository's files (committed or not, minus ignored ones) in a fresh git repo."""
    return copy_project(tmp_path / "project")


@pytest.fixture(scope="session")
def trained_once(tmp_path_factory) -> tuple[Path, list[str]]:
    """One full `dvc repro` of the default project with tiny training, and the stages it
    ran: shared by the tests that start from a trained project (`trained`, a copy each), so
    the suite pays for one run, not one a test (TestATrainedProject, on one worker)."""
    root = copy_project(tmp_path_factory.mktemp("trained") / "project")
    return root, ran(sh("dvc", "repro", cwd=root))


@pytest.fixture
def trained(trained_once, tmp_path) -> Path:
    """A copy of the trained project (git, DVC cache, outputs, its sqlite store) to change.
    Its MLflow experiments keep their artifacts under the original project's mlruns/."""
    dest = tmp_path / "project"
    shutil.copytree(trained_once[0], dest, symlinks=True)
    return dest


def copy_project(dest: Path) -> Path:
    """The repository's files (committed or not, minus ignored ones) in a fresh git repo at
    `dest`, with tiny training params."""
    files = sh("git", "ls-files", "-co", "--exclude-standard", cwd=REPO).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    for name in ("dvc.lock", "reports/validation/summary.json"):  # produced by the run itself
        (dest / name).unlink(missing_ok=True)
    sh("git", "init", "-q", "-b", "main", cwd=dest)
    set_params(dest, **TINY_TRAINING)
    return dest


def set_params(project: Path, **sections) -> None:
    params = yamlio.load((project / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yamlio.dump(params))


class TestATrainedProject:
    """The tests that start from a trained project: one `dvc repro` (the session's
    `trained_once`), a copy each (`trained`). A class, so that pytest-xdist (--dist loadscope)
    runs them on one worker, which pays for the one run."""

    def test_repro_runs_once_then_nothing(self, trained_once, trained):
        project = trained
        assert trained_once[1] == ALL_STAGES
        summary = json.loads((project / "reports/validation/summary.json").read_text())
        assert summary["passed"] is True and summary["images"]["total"] == 1797
        assert (project / "reports/validation/data_docs/index.html").is_file()

        second = sh("dvc", "repro", cwd=project)
        assert ran(second) == []
        assert "Data and pipelines are up to date." in second.stdout

        for model in ("gan", "autoencoder"):
            assert (project / f"models/{model}/weights/config.json").is_file()
            assert (project / f"reports/{model}/samples.png").is_file()
            assert (project / f"reports/{model}/eval_grid.png").is_file()
            record = json.loads((project / f"models/{model}/mlflow_run.json").read_text())
            assert record["tracking_uri"].startswith("sqlite:///")
        reference = json.loads((project / "data/reference/reference.json").read_text())
        assert reference["backbone"] == "domain" and reference["floor"]["fid"] > 0
        shown = json.loads(sh("dvc", "metrics", "show", "--json", cwd=project).stdout)
        metrics = next(iter(shown.values()))["data"]
        gan = metrics["reports/gan/metrics.json"]["data"]
        autoencoder = metrics["reports/autoencoder/metrics.json"]["data"]
        assert gan["fid"] > 0 and gan["floor"]["fid"] == reference["floor"]["fid"]
        assert autoencoder["mse"] > 0 and autoencoder["pca_mse"] > 0
        # every figure with its spread, and what it was measured on
        assert gan["fid_std"] > 0  # a share of 1 (recall, say) has a standard error of 0
        assert gan["precision_std"] >= 0 and gan["recall_std"] >= 0
        assert all(autoencoder[f"{key}_std"] > 0 for key in ("mse", "psnr", "ssim", "fid"))
        assert gan["measured_on"]["scored"] == gan["num_samples"]
        # the evaluation is logged to each model's training run
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{project}/mlflow.db")
        record = json.loads((project / "models/gan/mlflow_run.json").read_text())
        run = client.get_run(record["run_id"])
        assert run.data.metrics["eval/fid"] == pytest.approx(gan["fid"])
        assert run.data.metrics["eval/fid_std"] == pytest.approx(gan["fid_std"])
        assert "eval/floor.fid" in run.data.tags and "eval/floor.fid" not in run.data.metrics
        [dataset] = [d.dataset for d in run.inputs.dataset_inputs if d.dataset.name == "digits"]
        lock = yamlio.load((project / "dvc.lock").read_text())["stages"]["fetch"]["outs"]
        assert dataset.digest == next(o["md5"] for o in lock if o["path"] == "data/prepared")
        registered = json.loads((project / "reports/gan/registry.json").read_text())
        assert registered["std"] == pytest.approx(gan["fid_std"])

        # a teammate's clone, with the same DVC remote and tracking store: `dvc pull`, then what
        # `make run` runs after set-up reruns no stage, and the pulled run records name the runs
        # the shared store holds
        store = f"sqlite:///{project}/mlflow.db"
        sh("dvc", "remote", "add", "-d", "storage", str(project.parent / "remote"), cwd=project)
        sh("dvc", "push", "-q", cwd=project)
        sh("git", "add", "-A", cwd=project)
        sh("git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m",
           "trained", cwd=project)  # fmt: skip
        clone = project.parent / "clone"
        sh("git", "clone", "-q", str(project), str(clone), cwd=project.parent)
        sh("dvc", "pull", "-q", cwd=clone, tracking_uri=store)
        sh("genpipe", "params", cwd=clone, tracking_uri=store)
        pulled = sh("dvc", "repro", cwd=clone, tracking_uri=store)
        assert ran(pulled) == [] and "Data and pipelines are up to date." in pulled.stdout
        for model in ("gan", "autoencoder"):
            record = json.loads((clone / f"models/{model}/mlflow_run.json").read_text())
            assert client.get_run(record["run_id"]).info.status == "FINISHED"
        assert (clone / "reports/gan/train_log.csv").read_bytes() == (
            project / "reports/gan/train_log.csv").read_bytes()  # fmt: skip

        # one model's params rerun that model's training and evaluation alone (and the check of
        # params.yaml, whose output is the same bytes, so it reruns nothing by itself)
        set_params(project, autoencoder={"latent_dim": 3})
        assert ran(sh("dvc", "repro", cwd=project)) == [
            "params", "train@autoencoder", "evaluate@autoencoder",
            "register@autoencoder"]  # fmt: skip
        # editing the GAN's network reruns the GAN alone
        with (project / "src/genpipe/gan/network.py").open("a") as f:
            f.write("\n# an edit\n")
        assert ran(sh("dvc", "repro", cwd=project)) == ["train@gan", "evaluate@gan", "register@gan"]
        # the edit (a comment) retrained the GAN to the same weights: the same version
        registered = json.loads((project / "reports/gan/registry.json").read_text())
        assert (registered["version"], registered["decision"]) == (1, "already registered")
        # a GAN trained with another learning rate is a new version, champion or challenger by
        # its FID; the autoencoder is left alone
        set_params(project, gan={"lr_g": 5e-4})
        assert ran(sh("dvc", "repro", cwd=project)) == [
            "params", "train@gan", "evaluate@gan", "register@gan"]  # fmt: skip
        registered = json.loads((project / "reports/gan/registry.json").read_text())
        assert registered["version"] == 2 and registered["decision"] in ("champion", "challenger")
        # evaluate params: the reference, the evaluations and the registrations (which read the
        # reference) are what DVC finds changed, not the training; shared training params: both
        # models' training (and what reads their weights after). DVC's own status says so
        set_params(project, evaluate={"kid_subsets": 6})
        assert changed_stages(project) == {
            "params", "reference", "evaluate@autoencoder", "evaluate@gan", "register@autoencoder",
            "register@gan"}  # fmt: skip
        set_params(project, evaluate={"kid_subsets": 5}, train={"batch_size": 8})
        assert changed_stages(project) == {"params", "train@autoencoder", "train@gan"}
        set_params(project, train={"batch_size": 16})

        # a validate threshold reruns validate, and failing it stops the pipeline before training
        set_params(project, validate={"min_images_per_split": 100_000})
        failed = sh("dvc", "repro", cwd=project, check=False)
        assert failed.returncode != 0
        assert ran(failed) == ["params", "validate"]
        assert "FAILED splits.min_images" in failed.stderr

    def test_a_typo_in_params_fails_before_any_stage_touches_an_output(self, trained):
        project = trained
        kept = ["data/prepared", "models/gan/weights", "reports/gan/metrics.json",
                "models/autoencoder/weights", "reports/autoencoder/metrics.json"]  # fmt: skip
        before = {name: snapshot(project / name) for name in kept}
        valid = (project / "params.yaml").read_text()

        # a hand edit no stage declares, so DVC alone would never notice it: the params stage
        # reads the whole file and stops the run there
        typo = re.sub(r"^data:\n", "data:\n  sourse: mnist\n", valid, count=1, flags=re.M)
        assert typo != valid
        (project / "params.yaml").write_text(typo)
        failed = sh("dvc", "repro", cwd=project, check=False)
        assert failed.returncode != 0
        assert ran(failed) == ["params"]
        errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0].startswith("error: data.sourse: unknown key"), (
            failed.stderr
        )
        assert {name: snapshot(project / name) for name in kept} == before

        # the same file with a valid one-model change: that model's stages and the check alone
        (project / "params.yaml").write_text(valid)
        set_params(project, gan={"z_dim": 4})
        assert ran(sh("dvc", "repro", cwd=project)) == [
            "params", "train@gan", "evaluate@gan", "register@gan"]  # fmt: skip
        assert ran(sh("dvc", "repro", cwd=project)) == []
        weights = "models/autoencoder/weights"
        assert snapshot(project / weights) == before[weights]

    def test_a_stage_that_fails_at_run_time_leaves_its_previous_outputs_as_they_were(
        self, trained
    ):
        project = trained

        def contents() -> dict[str, bytes]:
            return {path: data for name in OUTPUTS
                    for path, (data, _) in snapshot(project / name).items()}  # fmt: skip

        before = contents()
        valid = (project / "params.yaml").read_text()

        def fails(*args: str, stages: list[str], error: str, **kw) -> None:
            """`dvc repro *args` runs `stages`, the last one fails with `error`, and every output
            is as it was, byte for byte, with no temporary file left."""
            failed = sh("dvc", "repro", *args, cwd=project, check=False, **kw)
            assert failed.returncode != 0 and ran(failed) == stages, failed.stdout
            errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
            assert len(errors) == 1 and error in errors[0], failed.stderr
            assert contents() == before, stages
            assert not [p for p in project.rglob(".*.tmp") if ".dvc" not in p.parts]
            (project / "params.yaml").write_text(valid)

        # fetch: a folder source whose path is a file (a dep DVC can hash; no folder to read)
        set_params(project, data={"source": "folder", "path": "README.md"})
        fails(stages=["params", "fetch"], error="README.md")
        # reference: more samples than the train split holds
        set_params(project, evaluate={"num_samples": 100_000})
        fails(stages=["params", "reference"], error="evaluate.num_samples: expected at most")
        # train: a learning rate that diverges (a VAE's log-variance overflows at lr 10, within
        # the params' bounds), stopped at the first non-finite loss
        set_params(project, autoencoder={"kind": "vae", "lr": 10.0})
        fails(stages=["params", "train@autoencoder"], error="training stopped")
        # evaluate and register: a tracking server that is down (each stage forced on its own)
        down = f"http://127.0.0.1:{free_port()}"
        for stage in ("evaluate@gan", "register@autoencoder"):
            fails("--force", "--single-item", stage, stages=[stage], error="unreachable",
                  tracking_uri=down)  # fmt: skip

        # nothing failed was recorded: with the causes gone, only the check of params.yaml (which
        # passed the last bad file) is out of date, and the failed stages rerun to the same
        # outputs and the same registered version
        assert ran(sh("dvc", "repro", cwd=project)) == ["params"]
        rerun = sh("dvc", "repro", "--force", "--single-item", "evaluate@gan",
                   "register@autoencoder", cwd=project)  # fmt: skip
        assert ran(rerun) == ["evaluate@gan", "register@autoencoder"]
        for name in ("reports/gan/metrics.json", "reports/gan/eval_grid.png"):
            assert (project / name).read_bytes() == before[str(project / name)]
        registered = json.loads((project / "reports/autoencoder/registry.json").read_text())
        assert (registered["version"], registered["decision"]) == (1, "already registered")

    def test_experiment_is_tagged_shown_and_reproducible(self, project, trained_once, tmp_path,
                                                         monkeypatch):  # fmt: skip
        for key, value in GIT_ENV.items():
            monkeypatch.setenv(key, value)
        sh("git", "add", "-A", cwd=project)
        sh("git", "commit", "-q", "-m", "tiny", cwd=project)

        # the params the shared trained project ran with: a fresh run of the same ones below
        lr = yamlio.load((project / "params.yaml").read_text())["gan"]["lr_g"]
        result = sh("dvc", "exp", "run", "-n", "lr-test", "-S", f"gan.lr_g={lr}", cwd=project)
        assert ran(result) == ALL_STAGES
        # the experiment's name is on the MLflow runs (tag and run name)
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{project}/mlflow.db")
        record = json.loads((project / "models/gan/mlflow_run.json").read_text())
        run = client.get_run(record["run_id"])
        assert run.data.tags["dvc.exp_name"] == "lr-test"
        assert run.info.run_name.endswith("-lr-test")
        # exp show and metrics diff carry FID, KID and MSE; plots render curves and grids
        shown = sh("dvc", "exp", "show", "--json", cwd=project).stdout
        assert '"lr-test"' in shown and '"fid"' in shown and '"kid_mean"' in shown
        assert '"mse"' in shown and f'"lr_g": {lr}' in shown
        diff = sh("dvc", "metrics", "diff", "--md", cwd=project).stdout
        assert "reports/gan/metrics.json" in diff and "| fid " in diff
        plots = sh("dvc", "plots", "show", "-o", str(tmp_path / "plots"), cwd=project)
        html = (tmp_path / "plots/index.html").read_text()
        for name in ("train_log.csv", "samples.png", "eval_grid.png"):
            assert name in html, (name, plots.stdout)

        # a fresh run of the same code and params (the shared trained project, in another
        # folder, at another time) gives the same hash for every cached output
        ours = cached_outs(yamlio.load((project / "dvc.lock").read_text()))
        theirs = cached_outs(yamlio.load((trained_once[0] / "dvc.lock").read_text()))
        assert ours == theirs
        assert {"data/prepared", "models/gan/weights", "reports/gan/metrics.json",
                "reports/gan/train_log.csv"} <= set(ours)  # fmt: skip


def snapshot(path: Path) -> dict[str, tuple[bytes, int]]:
    """Each file under `path` (or `path` itself): its bytes and modification time."""
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return {str(f): (f.read_bytes(), f.stat().st_mtime_ns) for f in files if f.is_file()}


# every output of every stage but the checkpoints (which training updates as it goes, so that
# a rerun resumes), uncached ones included
OUTPUTS = ["reports/params/check.json", "data/prepared", "reports/validation", "data/reference",
           *(f"models/{m}/{name}" for m in ("gan", "autoencoder")
             for name in ("weights", "mlflow_run.json")),
           *(f"reports/{m}/{name}" for m in ("gan", "autoencoder")
             for name in ("train_log.csv", "samples.png", "metrics.json", "eval_grid.png",
                          "registry.json"))]  # fmt: skip


def test_an_unknown_model_fails_in_the_params_stage_with_one_line(project):
    params = yamlio.load((project / "params.yaml").read_text())
    params["models"] = ["vae"]  # no such stage script or package: DVC never gets to them
    (project / "params.yaml").write_text(yamlio.dump(params))
    failed = sh("dvc", "repro", cwd=project, check=False)
    assert failed.returncode != 0 and ran(failed) == ["params"]
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: models[0]: expected one of 'gan' or 'autoencoder'; got 'vae'"]
    assert "train_vae.py" not in failed.stdout + failed.stderr


def test_repro_on_a_folder_of_rgb_pngs_of_assorted_sizes(project, tmp_path):
    images = tmp_path / "my_images"
    sizes = [(8, 8), (12, 40), (33, 21), (64, 64), (100, 75)]
    for c, cls in enumerate(("apple", "banana", "cherry")):
        for i in range(200):
            write_png(images / cls / f"{i:03d}.png", sizes[i % len(sizes)], seed=1000 * c + i)

    set_params(project, data={"source": "folder", "path": str(images), "channels": 3,
                              "image_size": 16})  # fmt: skip
    # the classes of these random images cannot be learned: keep the domain network anyway
    set_params(project, evaluate={"domain": {"steps": 20, "width": 4, "min_accuracy": 0.0}})
    result = sh("dvc", "repro", cwd=project)
    assert ran(result) == ALL_STAGES
    info = json.loads((project / "data/prepared/info.json").read_text())
    assert info["shape"] == [600, 3, 16, 16]
    assert info["class_names"] == ["apple", "banana", "cherry"]

    # new images in the folder rerun the pipeline; nothing else does. What reruns after
    # fetch is what DVC then finds changed: every stage after it reads its output
    assert ran(sh("dvc", "repro", cwd=project)) == []
    write_png(images / "apple" / "new.png", (20, 20), seed=5)
    assert ran(sh("dvc", "repro", "fetch", cwd=project)) == ["fetch"]  # params.yaml is as it was
    assert changed_stages(project) == set(ALL_STAGES[2:])
    # and so does a data param: another split is other data for every stage after fetch
    before = json.loads((project / "data/prepared/info.json").read_text())["counts"]
    set_params(project, data={"test_fraction": 0.3})
    assert ran(sh("dvc", "repro", "fetch", cwd=project)) == ["params", "fetch"]
    assert changed_stages(project) == set(ALL_STAGES[2:])
    after = json.loads((project / "data/prepared/info.json").read_text())["counts"]
    assert after["test"] > before["test"] and sum(after.values()) == sum(before.values()) == 601


def changed_stages(project: Path) -> set[str]:
    """The stages `dvc status --json` finds changed: what a `dvc repro` would run now."""
    status = json.loads(sh("dvc", "status", "--json", cwd=project).stdout)
    return {name for name, changes in status.items() if changes}


GIT_ENV = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}  # fmt: skip


def cached_outs(lock: dict) -> dict[str, str]:
    """path -> md5 of every output in a dvc.lock but the run records, whose run ids are each
    run's own."""
    return {out["path"]: out["md5"] for stage in lock["stages"].values()
            for out in stage.get("outs", [])
            if not out["path"].endswith("mlflow_run.json")}  # fmt: skip


DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def test_the_fashion_mnist_preset_runs_all_nine_stages_with_tiny_steps(tmp_path):
    if not DEBIAN.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{DEBIAN}: expected Debian's dataset-fashion-mnist (.ci/run installs it)")
        pytest.skip(f"{DEBIAN} not found: apt-get install dataset-fashion-mnist")
    project = copy_project(tmp_path / "project")
    # the preset applied as the README says, then its training and scoring made tiny
    shutil.copy2(REPO / "examples/fashion-mnist/params.yaml", project / "params.yaml")
    set_params(project, gan={"steps": 10}, autoencoder={"steps": 10},
               evaluate={"num_samples": 1000, "kid_subsets": 5, "memorisation_images": 1000,
                         "domain": {"steps": 50, "min_accuracy": 0.0}})  # fmt: skip
    assert ran(sh("dvc", "repro", cwd=project)) == ALL_STAGES
    summary = json.loads((project / "reports/validation/summary.json").read_text())
    assert summary["passed"] is True and summary["images"]["total"] == 70000
    reference = json.loads((project / "data/reference/reference.json").read_text())
    assert (reference["test_images"], reference["num_samples"]) == (10000, 1000)
    gan = json.loads((project / "reports/gan/metrics.json").read_text())
    autoencoder = json.loads((project / "reports/autoencoder/metrics.json").read_text())
    assert gan["num_samples"] == 1000 and gan["fid"] > 0
    assert autoencoder["test_images"] == 10000 and autoencoder["latent_dim"] == 16
    lock = yamlio.load((project / "dvc.lock").read_text())
    assert str(DEBIAN) in {dep["path"] for dep in lock["stages"]["fetch"]["deps"]}
    assert ran(sh("dvc", "repro", cwd=project)) == []

    # the GAN made class-conditional: only its stages rerun, on the 10 balanced classes, and
    # the version it registers takes a label column
    set_params(project, gan={"conditional": True})
    assert ran(sh("dvc", "repro", cwd=project)) == ["params", "train@gan", "evaluate@gan",
                                                     "register@gan"]  # fmt: skip
    config = json.loads((project / "models/gan/weights/config.json").read_text())
    assert config["generator"]["class_weights"] == [0.1] * 10
    assert config["discriminator"]["num_classes"] == 10
    version = json.loads((project / "reports/gan/registry.json").read_text())["version"]
    code = (
        "import mlflow, pandas as pd\n"
        f"m = mlflow.pyfunc.load_model('models:/genpipe-gan/{version}')\n"
        "print([c.name for c in m.metadata.get_input_schema().inputs])\n"
        "x = m.predict(pd.DataFrame({'seed': [4, 4], 'label': [0, 9]}))\n"
        "print(x.shape, (x[0] != x[1]).any())\n"
    )
    out = sh(sys.executable, "-c", code, cwd=project).stdout
    assert out.splitlines()[-2:] == ["['seed', 'label']", "(2, 1, 28, 28) True"], out
