"""Evaluation: reconstruction metrics, the domain network, the reference stage's output, the
evaluate functions, and logging to the training run recorded in mlflow_run.json."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
import pytest
import torch

from genpipe import reference as ev
from genpipe import weights
from genpipe.autoencoder import evaluate as ae_evaluate
from genpipe.autoencoder.artifact import load_autoencoder
from genpipe.autoencoder.evaluate import evaluate_autoencoder
from genpipe.autoencoder.network import AutoEncoder
from genpipe.data.split import Split
from genpipe.errors import DataError, MetricsError, TrackingError
from genpipe.fileio import atomic_dir
from genpipe.gan import evaluate as gan_evaluate
from genpipe.gan.artifact import load_generator
from genpipe.gan.evaluate import evaluate_gan, generate
from genpipe.gan.network import Generator
from genpipe.metrics import reconstruction
from genpipe.metrics.compare import compare
from genpipe.metrics.domain import DomainNet, accuracy
from genpipe.metrics.features import extract_features
from genpipe.params.load import parse_params
from genpipe.params.schema import DomainParams, EvaluateParams, ImageSize
from genpipe.reference import build_reference, write_reference
from genpipe.tracking.recorded_run import RecordedRun
from genpipe.tracking.training_run import TrainingRun
from genpipe.weights import WeightsError

from builders import random_state_dict, train_domain

CPU = torch.device("cpu")


# --- reconstruction metrics ------------------------------------------------------------------


def test_identical_images_give_mse_0_ssim_1_and_capped_psnr():
    x = np.random.default_rng(0).random((5, 1, 8, 8))
    assert reconstruction.mse(x, x) == 0.0
    assert reconstruction.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    assert reconstruction.psnr(x, x) == reconstruction.PSNR_MAX_DB


def test_mse_and_psnr_of_a_known_offset():
    x = np.full((3, 3, 16, 16), 0.5)
    y = x + 0.1  # every pixel off by 0.1: MSE 0.01, PSNR 20 dB
    assert reconstruction.mse(x, y) == pytest.approx(0.01)
    assert reconstruction.psnr(x, y) == pytest.approx(20.0)


def test_ssim_falls_with_noise_and_matches_per_image_mean():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    x = rng.random((4, 3, 16, 16))
    slightly = np.clip(x + 0.05 * rng.standard_normal(x.shape), 0, 1)
    very = np.clip(x + 0.5 * rng.standard_normal(x.shape), 0, 1)
    assert 1.0 > reconstruction.ssim(x, slightly) > reconstruction.ssim(x, very)
    per_image = [
        structural_similarity(a, b, data_range=1.0, channel_axis=0, win_size=7)
        for a, b in zip(x, slightly, strict=True)
    ]
    assert reconstruction.ssim(x, slightly) == pytest.approx(np.mean(per_image), rel=1e-12)


def test_reconstruction_metrics_refuse_mismatched_shapes():
    with pytest.raises(MetricsError, match=r"\(2, 1, 8, 8\) and \(3, 1, 8, 8\)"):
        reconstruction.mse(np.zeros((2, 1, 8, 8)), np.zeros((3, 1, 8, 8)))


def test_pca_with_every_component_is_exact_and_with_fewer_is_not():
    rng = np.random.default_rng(2)
    train, test = rng.random((50, 1, 4, 4)), rng.random((10, 1, 4, 4))
    full = reconstruction.pca_reconstruction(train, test, components=16)
    assert reconstruction.mse(test, full) < 1e-20
    assert reconstruction.mse(test, reconstruction.pca_reconstruction(train, test, 2)) > 1e-3


@pytest.mark.parametrize("components", [2, 16, 40])
def test_pca_matches_sklearn_from_uint8_in_chunks(components, monkeypatch):
    from sklearn.decomposition import PCA

    # digits-like: 8 x 8 uint8 images of 17 levels with a structured spectrum, scaled by
    # 1/16 inside; more train rows than a chunk, so the sums go chunk by chunk
    monkeypatch.setattr(reconstruction, "PCA_CHUNK", 64)
    rng = np.random.default_rng(3)
    codes = rng.standard_normal((500, 12)) @ rng.standard_normal((12, 64))  # (500, 64)
    images = np.clip(np.rint(8 + 3 * codes + rng.standard_normal((500, 64))), 0, 16)
    images = images.astype(np.uint8).reshape(500, 1, 8, 8)
    train, test = images[:400], images[400:]
    pca = PCA(n_components=components, svd_solver="full").fit(train.reshape(400, -1) / 16)
    codes = pca.transform(test.reshape(100, -1) / 16)
    expected = np.clip(pca.inverse_transform(codes), 0.0, 1.0).reshape(test.shape)
    found = reconstruction.pca_reconstruction(train, test, components, scale=1 / 16)
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-12)
    x = test / 16
    mse = reconstruction.mse(x, found)
    assert mse == pytest.approx(reconstruction.mse(x, expected), rel=1e-9)
    assert mse > 1e-4  # not the trivial full-rank case


# --- the domain network ----------------------------------------------------------------------


@pytest.mark.parametrize("size", get_args(ImageSize))
@pytest.mark.parametrize("channels", [1, 3])
def test_domain_network_shapes(size, channels):
    net = DomainNet(size, channels, num_classes=4, width=4, feature_dim=12)
    x = torch.randint(0, 256, (2, channels, size, size), dtype=torch.uint8)
    assert net.features(x).shape == (2, 12)
    assert net(x).shape == (2, 4)


def two_class_images(n: int, size: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: bright left half, class 1: bright right half, with noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 60, (n, 1, size, size)).astype(np.uint8)
    for i, label in enumerate(labels):
        half = slice(0, size // 2) if label == 0 else slice(size // 2, size)
        images[i, 0, :, half] += 180
    return images, labels


def test_domain_network_learns_and_is_deterministic():
    images, labels = two_class_images(64)
    params = DomainParams(steps=30, width=4, feature_dim=8, batch_size=16)
    a = train_domain(images, labels, 2, params, seed=0, device=CPU)
    b = train_domain(images, labels, 2, params, seed=0, device=CPU)
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(wa, wb), name
    # features are rescaled to unit RMS on the train split (KID's kernel assumes O(1))
    rms = np.sqrt(np.mean(extract_features(a.features, images, 64, CPU) ** 2))
    assert rms == pytest.approx(1.0, rel=1e-5) and float(a.feature_scale) != 1.0
    test_images, test_labels = two_class_images(32, seed=1)
    assert accuracy(a, test_images, test_labels, batch_size=7) == 1.0


def test_saved_domain_network_reloads_to_the_same_features(tmp_path):
    """Weights (BatchNorm's running statistics too) and config round-trip bit for bit."""
    from genpipe.metrics.domain import load_domain_network

    images, labels = two_class_images(64)
    params = DomainParams(steps=5, width=4, feature_dim=8, batch_size=16)
    net = train_domain(images, labels, 2, params, seed=0, device=CPU)
    weights.save_weights(net, tmp_path / "domain.safetensors")
    loaded = load_domain_network(tmp_path / "domain.safetensors", net.config(), CPU)
    x = torch.from_numpy(images)
    assert torch.equal(loaded.features(x), net.features(x))


def test_domain_backbone_refuses_unlabeled_data():
    split = tiny_split()
    split.train_labels[:] = -1
    with pytest.raises(DataError, match="^evaluate.backbone domain: expected labeled .*found 90 "
                       "unlabeled images. Use evaluate.backbone: inception"):  # fmt: skip
        build_reference(tiny_params(), split, CPU)


def test_features_do_not_depend_on_the_batch_size():
    net = DomainNet(8, 1, 2, width=4, feature_dim=8).eval()
    images, _ = two_class_images(20)
    one = extract_features(net.features, images, 20, CPU)
    many = extract_features(net.features, images, 3, CPU)
    assert one.shape == (20, 8) and one.dtype == np.float64
    np.testing.assert_allclose(one, many, rtol=1e-6, atol=1e-7)


def test_features_refuse_float_images():
    net = DomainNet(8, 1, 2, width=4, feature_dim=8).eval()
    with pytest.raises(MetricsError, match="uint8"):
        extract_features(net.features, np.zeros((2, 1, 8, 8), np.float32), 2, CPU)


# --- the reference stage ---------------------------------------------------------------------


def tiny_params(**evaluate) -> object:
    raw = {
        "evaluate": {
            "kid_subsets": 5,
            "domain": {"steps": 40, "width": 4, "feature_dim": 6, "batch_size": 16},
            **evaluate,
        }
    }
    return parse_params(raw)


def tiny_split(n: int = 120, test_every: int = 4) -> Split:
    images, labels = two_class_images(n)
    test = np.arange(n) % test_every == 0
    return Split(images[~test], images[test], labels[~test], labels[test], 2, Path("prepared"))


def test_reference_holds_test_statistics_and_a_floor(tmp_path):
    params = tiny_params()
    reference, net = build_reference(params, tiny_split(), CPU)
    info = reference.info
    assert info["backbone"] == "domain" and info["test_images"] == 30
    assert info["num_samples"] == 30 and info["feature_dim"] == 6
    assert info["domain_accuracy"] >= 0.9
    assert reference.features.shape == (30, 6)
    np.testing.assert_allclose(reference.mu, reference.features.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(reference.sigma_sqrt @ reference.sigma_sqrt, reference.sigma,
                               atol=1e-8)  # fmt: skip
    floor = info["floor"]
    assert floor["fid"] > 0 and 0 <= floor["precision"] <= 1 and 0 <= floor["recall"] <= 1

    with atomic_dir(tmp_path / "reference") as staging:
        write_reference(staging, reference, net)
    loaded = ev.load_reference(tmp_path / "reference", params.evaluate)
    np.testing.assert_array_equal(loaded.sigma, reference.sigma)
    assert loaded.info == json.loads(json.dumps(info))
    # the real features against themselves: no distance, full precision and recall
    e = params.evaluate
    same = compare(loaded, loaded.features, e.kid_subsets, 15, e.pr_k, seed=0)
    assert abs(same["fid"]) < 1e-6
    assert same["precision"] == 1.0 and same["recall"] == 1.0


def test_reference_is_deterministic():
    params = tiny_params()
    a, _ = build_reference(params, tiny_split(), CPU)
    b, _ = build_reference(params, tiny_split(), CPU)
    assert a.info == b.info
    np.testing.assert_array_equal(a.features, b.features)


def test_reference_fails_below_min_accuracy():
    params = tiny_params(domain={"steps": 1, "width": 2, "feature_dim": 2, "min_accuracy": 1.0})
    split = tiny_split()
    split.train_labels[:] = np.random.default_rng(0).integers(0, 2, 90)  # noise labels
    split.test_labels[:] = np.random.default_rng(1).integers(0, 2, 30)
    with pytest.raises(MetricsError, match=r"evaluate.domain.min_accuracy"):
        build_reference(params, split, CPU)


def test_reference_refuses_more_samples_than_train_images():
    with pytest.raises(MetricsError, match=r"evaluate.num_samples: expected at most 90"):
        build_reference(tiny_params(num_samples=91), tiny_split(), CPU)


def test_load_reference_refuses_another_backbone(tmp_path):
    params = tiny_params()
    reference, net = build_reference(params, tiny_split(), CPU)
    with atomic_dir(tmp_path / "ref") as staging:
        write_reference(staging, reference, net)
    with pytest.raises(MetricsError, match="inception.*found domain"):
        ev.load_reference(tmp_path / "ref", EvaluateParams(backbone="inception"))
    with pytest.raises(MetricsError, match="dvc repro reference"):
        ev.load_reference(tmp_path / "missing", params.evaluate)


class StandInInception(torch.nn.Module):
    """load_inception's network, small: uint8 images -> 2048-d features of their pixels,
    with the SHA-256 of the file it was "loaded" from, as the real one records it."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.weights_sha256 = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        self.project = torch.nn.Linear(64, 2048)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.adaptive_avg_pool2d(images.float() / 255, 8).mean(1)
        return self.project(x.flatten(1))


def test_reference_with_the_inception_backbone_records_its_file(tmp_path, monkeypatch):
    """The reference stage with the Inception backbone (a stand-in network: the real one is
    the slow test below): 2048-d features, the weights file's SHA-256 recorded, and an
    evaluation with another file refused."""
    from genpipe.metrics import inception

    monkeypatch.setattr(inception, "load_inception",
                        lambda path, device: StandInInception(path))  # fmt: skip
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"the standard file")
    # no bootstraps: each is an eigendecomposition of a 2048 x 2048 matrix
    params = tiny_params(backbone="inception", inception_weights=str(weights), pr_k=1,
                         bootstraps=0)  # fmt: skip
    reference, net = build_reference(params, tiny_split(n=8, test_every=2), CPU)
    assert net is None and reference.features.shape == (4, 2048)
    assert reference.info["feature_dim"] == 2048
    assert reference.info["inception_sha256"] == hashlib.sha256(b"the standard file").hexdigest()
    assert np.isfinite(reference.info["floor"]["fid"])

    other = tmp_path / "other.pth"
    other.write_bytes(b"another file")
    evaluate = tiny_params(backbone="inception", inception_weights=str(other)).evaluate
    with pytest.raises(MetricsError, match="dvc repro --force reference"):
        ev.load_backbone(evaluate, reference, tmp_path, CPU)


@pytest.mark.slow  # 299 x 299 forwards of the real network: about 20 s on a CPU
def test_reference_with_the_inception_backbone(tmp_path, monkeypatch):
    """Random weights stand in for the standard file: 2048-d features, the file's SHA-256
    recorded, and an evaluation with another file refused."""
    weights = tmp_path / "inception.pth"
    torch.save(random_state_dict(), weights)
    params = tiny_params(backbone="inception", inception_weights=str(weights), pr_k=1)
    prepared = tiny_split(n=8, test_every=2)  # 299 x 299 forwards are slow on a CPU
    reference, net = build_reference(params, prepared, CPU)
    assert net is None and reference.features.shape == (4, 2048)
    assert reference.info["feature_dim"] == 2048
    assert reference.info["inception_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert np.isfinite(reference.info["floor"]["fid"])

    other = tmp_path / "other.pth"
    torch.save(random_state_dict(seed=1), other)
    evaluate = tiny_params(backbone="inception", inception_weights=str(other)).evaluate
    with pytest.raises(MetricsError, match="dvc repro --force reference"):
        ev.load_backbone(evaluate, reference, tmp_path, CPU)


# --- the evaluate stages ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    params = tiny_params()
    reference, net = build_reference(params, tiny_split(), CPU)
    directory = tmp_path_factory.mktemp("reference")
    with atomic_dir(directory) as staging:
        write_reference(staging, reference, net)
    return directory


def loaded(reference_dir):
    evaluate = tiny_params().evaluate
    reference = ev.load_reference(reference_dir, evaluate)
    return reference, ev.load_backbone(evaluate, reference, reference_dir, CPU), evaluate


def test_evaluate_gan_reports_metrics_beside_the_floor(reference_dir, tmp_path):
    reference, backbone, evaluate = loaded(reference_dir)
    torch.manual_seed(0)
    netG = Generator(8, 1, z_dim=4, width=8)
    weights.save_weights(netG, tmp_path / "generator_ema.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"generator": netG.config()}))
    netG = load_generator(tmp_path, CPU)

    metrics, grids = evaluate_gan(netG, reference, backbone, evaluate, seed=0, device=CPU)
    again, _ = evaluate_gan(netG, reference, backbone, evaluate, seed=0, device=CPU)
    assert metrics == again  # deterministic: DVC caches metrics.json
    assert metrics["num_samples"] == 30 and metrics["floor"] == reference.info["floor"]
    assert metrics["fid"] > 0 and metrics["kid_std"] >= 0
    assert 0 < metrics["fid_std"] < metrics["fid"] and metrics["precision_std"] >= 0
    assert metrics["measured_on"]["scored_images"] == "generated samples"
    assert metrics["fid_over_floor"] == pytest.approx(metrics["fid"] / metrics["floor"]["fid"],
                                                      rel=1e-5)  # fmt: skip
    assert set(grids) == {Path("reports/gan/eval_grid.png")}  # no train images: no tail grid
    assert 0 <= metrics["memorised"] <= 1 and metrics["density"] >= 0 and metrics["coverage"] >= 0
    samples = generate(netG, 5, seed=0, batch_size=2, device=CPU)
    assert samples.dtype == np.uint8 and samples.shape == (5, 1, 8, 8)
    np.testing.assert_array_equal(samples, generate(netG, 5, seed=0, batch_size=5, device=CPU))


@pytest.mark.parametrize("model", ["gan", "autoencoder"])
def test_register_scores_a_champion_as_the_evaluate_stage_does(reference_dir, tmp_path,
                                                               monkeypatch, model):  # fmt: skip
    """registry.rescore.Scorer on a version's weights gives the evaluate stage's metrics.json
    to the bit: the same function, reference, backbone, seed and sample count."""
    import shutil

    from genpipe.data.canonical import Prepared, write_prepared
    from genpipe.registry.rescore import Scorer, score_version

    monkeypatch.chdir(tmp_path)
    shutil.copytree(reference_dir, tmp_path / "data" / "reference")
    split = tiny_split()
    images = np.concatenate([split.train, split.test])
    labels = np.concatenate([split.train_labels, split.test_labels])
    manifest = pd.DataFrame({"index": np.arange(120), "label": labels,
                             "split": ["train"] * 90 + ["test"] * 30})  # fmt: skip
    write_prepared(Prepared(images, manifest, {"num_classes": 2}), tmp_path / "data" / "prepared")
    torch.manual_seed(0)
    weights_dir = tmp_path / "champion"
    if model == "gan":
        net = Generator(8, 1, z_dim=4, width=8)
        weights.save_weights(net, weights_dir / "generator_ema.safetensors")
        config = {"model": "gan", "generator": net.config()}
    else:
        net = AutoEncoder(8, 1, latent_dim=3, width=4)
        weights.save_weights(net, weights_dir / "autoencoder.safetensors")
        config = {"model": "autoencoder", "autoencoder": net.config()}
    (weights_dir / "config.json").write_text(json.dumps(config))
    params = tiny_params()

    reference, backbone, evaluate = loaded(reference_dir)
    module = gan_evaluate if model == "gan" else ae_evaluate
    expected, _ = module.evaluate_weights(weights_dir, reference, backbone, split, evaluate,
                                          params.seed, CPU)  # fmt: skip
    metrics, took = score_version(lambda tmp: weights_dir, Scorer(model, params))
    assert metrics == expected and took.endswith(" s")
    assert set(metrics) >= {"fid", "mse" if model == "autoencoder" else "kid_mean"}

    # a weights file that does not load: no metrics, and why
    (weights_dir / "config.json").write_text("{}")
    metrics, why = score_version(lambda tmp: weights_dir, Scorer(model, params))
    assert metrics is None and "config.json" in why


def test_load_generator_names_the_missing_file(tmp_path):
    with pytest.raises(WeightsError, match=r"config.json.*dvc repro train@gan"):
        load_generator(tmp_path, CPU)


def test_evaluate_autoencoder_against_pca(reference_dir, tmp_path):
    reference, backbone, evaluate = loaded(reference_dir)
    torch.manual_seed(0)
    net = AutoEncoder(8, 1, latent_dim=3, width=4)
    weights.save_weights(net, tmp_path / "autoencoder.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"autoencoder": net.config()}))
    net = load_autoencoder(tmp_path, CPU)
    split = tiny_split()
    metrics, _ = evaluate_autoencoder(
        net, split.train, split.test, reference, backbone, evaluate, device=CPU
    )
    assert metrics["latent_dim"] == 3 and metrics["test_images"] == 30
    assert metrics["mse"] > metrics["pca_mse"] > 0  # an untrained AE is worse than PCA
    assert metrics["mse_over_pca"] == pytest.approx(metrics["mse"] / metrics["pca_mse"], rel=1e-5)
    assert 0 < metrics["psnr"] < 100 and -1 <= metrics["ssim"] < 1
    assert metrics["fid"] > 0 and metrics["floor"]["fid"] == reference.info["floor"]["fid"]
    # each figure with its spread over the 30 test images, and what it was measured on
    for key in ("mse", "psnr", "ssim", "fid"):
        assert 0 < metrics[f"{key}_std"] < abs(metrics[key]), key
    assert metrics["measured_on"] == {
        "scored": 30, "scored_images": "reconstructions of the test split",
        "reference_images": 30, "split": "test", "backbone": "domain", "resize": "none",
        "fid_bootstraps": 20}  # fmt: skip


# --- logging to the training run -------------------------------------------------------------


def test_recorded_run_gets_the_metrics_and_files(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    record = tmp_path / "mlflow_run.json"
    with TrainingRun("gan", {"seed": 0}, "hash", "exp", record_path=record, uri=uri):
        pass
    metrics_file = tmp_path / "metrics.json"
    metrics_file.write_text("{}")
    run = RecordedRun(record, uri=uri).open()
    run.log({"fid": 1.5, "floor": {"fid": 0.5}, "note": "text"}, [metrics_file])

    logged = MlflowClient(uri).get_run(run.run_id)
    assert logged.data.metrics == {"eval/fid": 1.5}  # the model's figures: points
    assert logged.data.tags["eval/floor.fid"] == "0.5"  # the evaluation's constants: tags
    assert logged.info.status == "FINISHED"  # logging does not reopen it
    names = [f.path for f in MlflowClient(uri).list_artifacts(run.run_id, "eval")]
    assert names == ["eval/metrics.json"]


def test_recorded_run_errors_name_the_record(tmp_path, caplog):
    with pytest.raises(TrackingError, match="no such file"):
        RecordedRun(tmp_path / "mlflow_run.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"run_id": "x"}')
    with pytest.raises(TrackingError, match="run_id and tracking_uri"):
        RecordedRun(bad)
    gone = tmp_path / "gone.json"
    gone.write_text(json.dumps({"run_id": "0" * 32,
                                "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}))  # fmt: skip
    store = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(TrackingError, match="not there"):
        RecordedRun(gone, uri=store).open()
    # on a fresh server the register stage rebuilds the run: evaluate may go on without it
    missing = RecordedRun(gone, uri=store).open(missing_ok=True)
    assert missing.missing
    with caplog.at_level("WARNING", logger="genpipe.tracking"):
        missing.log({"fid": 1.0}, [])  # nothing to log to: a warning, no error
    assert "not logged" in caplog.text


# --- files genpipe did not write (corrupt or of another network) ------------------------------


def _copy_reference(reference_dir, tmp_path):
    import shutil

    shutil.copytree(reference_dir, tmp_path / "ref")
    return tmp_path / "ref"


@pytest.mark.parametrize(("name", "content", "found"), [
    ("stats.safetensors", b"garbage" * 10, "expected the reference stage's statistics"),
    ("reference.json", b"{", "expected the reference stage's summary as JSON"),
    ("reference.json", b"\xff\xfegarbage", "expected the reference stage's summary as JSON"),
    ("reference.json", b"[1, 2]", "a JSON object; found list"),
])  # fmt: skip
def test_garbage_reference_file_is_one_line_naming_it(reference_dir, tmp_path, name, content,
                                                      found):  # fmt: skip
    directory = _copy_reference(reference_dir, tmp_path)
    (directory / name).write_bytes(content)
    with pytest.raises(MetricsError) as excinfo:
        ev.load_reference(directory, tiny_params().evaluate)
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith(f"{directory / name}: {found}"[:60])
    assert found in message and "dvc repro --force reference" in message


def test_reference_statistics_of_other_shapes_are_one_line(reference_dir, tmp_path):
    from safetensors.numpy import save_file

    directory = _copy_reference(reference_dir, tmp_path)
    save_file({"features": np.zeros((3, 4), np.float32), "mu": np.zeros(5),
               "sigma": np.eye(5), "sigma_sqrt": np.eye(5)},
              str(directory / "stats.safetensors"))  # fmt: skip
    with pytest.raises(MetricsError, match=r"stats.safetensors: expected features \(N, D\)"):
        ev.load_reference(directory, tiny_params().evaluate)


def _gan_weights(directory):
    torch.manual_seed(0)
    netG = Generator(8, 1, z_dim=4, width=8)
    weights.save_weights(netG, directory / "generator_ema.safetensors")
    (directory / "config.json").write_text(json.dumps({"generator": netG.config()}))
    return directory


def test_garbage_weights_safetensors_is_one_line(tmp_path):
    _gan_weights(tmp_path)
    (tmp_path / "generator_ema.safetensors").write_bytes(b"garbage" * 100)
    with pytest.raises(WeightsError) as excinfo:
        load_generator(tmp_path, CPU)
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith(f"{tmp_path}/generator_ema.safetensors")
    assert "written by the train@gan stage" in message


def test_weights_of_another_network_are_one_line(tmp_path):
    _gan_weights(tmp_path)
    weights.save_weights(AutoEncoder(8, 1, latent_dim=3, width=4),
                         tmp_path / "generator_ema.safetensors")  # fmt: skip
    with pytest.raises(WeightsError) as excinfo:
        load_generator(tmp_path, CPU)
    message = str(excinfo.value)
    assert "\n" not in message and "expected weights of the network its config.json" in message
    assert "dvc repro --force train@gan" in message


def test_config_json_of_an_open_brace_is_one_line(tmp_path):
    _gan_weights(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(WeightsError) as excinfo:
        load_generator(tmp_path, CPU)
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path}/config.json: expected the train@gan stage's network")


# config.json beside the weights is a file genpipe did not necessarily write: held to the
# params' bounds before any network is built (a width of 1e9 would allocate 4 TB)
# fmt: off
BAD_CONFIGS = {
    "width 1e9": ({"width": 10**9}, "generator.width: expected a value less than or equal to 2048"),
    "width 1e5": ({"width": 10**5}, "generator.width: expected a value less than"),
    "channels -1": ({"channels": -1}, "generator.channels: expected one of 1 or 3; got -1"),
    "depth 1e8": ({"depth": 10**8}, "generator.depth: expected a value less than"),
    "z_dim 1e24": ({"z_dim": 10**24}, "generator.z_dim: expected a value less than"),
    "an unknown key": ({"widht": 8}, "generator.widht: unknown key"),
    "class weights of 0": ({"class_weights": [0.0, 1.0]}, "generator.class_weights[0]"),
}
# fmt: on


@pytest.mark.parametrize("case", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_a_config_json_out_of_bounds_is_one_line_before_any_network_is_built(
    tmp_path, case, monkeypatch
):
    change, expected = case
    _gan_weights(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["generator"].update(change)
    (tmp_path / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(Generator, "__init__", lambda *a, **k: pytest.fail("built"))
    with pytest.raises(WeightsError) as excinfo:
        load_generator(tmp_path, CPU)
    message = str(excinfo.value)
    assert "\n" not in message and expected in message
    assert message.startswith(f"{tmp_path}/config.json: expected a config that builds")


def test_an_autoencoder_and_a_domain_config_out_of_bounds_are_one_line(tmp_path):
    from genpipe.metrics.domain import load_domain_network

    net = AutoEncoder(8, 1, latent_dim=3, width=4)
    weights.save_weights(net, tmp_path / "autoencoder.safetensors")
    config = {"autoencoder": {**net.config(), "latent_dim": 10**9}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=r"autoencoder\.latent_dim: expected a value less"):
        load_autoencoder(tmp_path, CPU)
    domain = {"image_size": 8, "channels": 1, "num_classes": 2, "width": 10**6,
              "feature_dim": 8}  # fmt: skip
    with pytest.raises(WeightsError, match=r"reference.json: .*domain\.width: expected a value"):
        load_domain_network(tmp_path / "domain.safetensors", domain, CPU)


def test_new_safetensors_files_are_readable_per_the_umask(tmp_path):
    import os
    import stat

    params = tiny_params()
    reference, net = build_reference(params, tiny_split(), CPU)
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "ref") as staging:
            write_reference(staging, reference, net)
        _gan_weights(tmp_path)
    finally:
        os.umask(old)
    for path in [*(tmp_path / "ref").iterdir(), tmp_path / "generator_ema.safetensors"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_the_autoencoder_is_compared_with_the_floor_at_the_count_it_scores():
    """evaluate.num_samples sets the GAN's count (and the floor's), while the autoencoder
    scores every test image: its fid_over_floor divides by a floor of that count."""
    split = tiny_split()  # 90 train, 30 test images
    params = tiny_params(num_samples=60)
    reference, net = build_reference(params, split, CPU)
    info = reference.info
    assert info["num_samples"] == 60 and "floor_at_test_count" in info
    assert info["floor_at_test_count"]["fid"] != info["floor"]["fid"]  # the count matters
    torch.manual_seed(0)
    autoencoder = AutoEncoder(8, 1, latent_dim=3, width=4)
    metrics, _ = evaluate_autoencoder(autoencoder, split.train, split.test, reference,
                                      net.features, params.evaluate, device=CPU)  # fmt: skip
    at_test = info["floor_at_test_count"]["fid"]
    assert metrics["floor"] == {"fid": at_test}
    assert metrics["fid_over_floor"] == pytest.approx(metrics["fid"] / at_test, rel=1e-4)
    # at the default count (the test split's) there is one floor
    default, _ = build_reference(tiny_params(), split, CPU)
    assert "floor_at_test_count" not in default.info
