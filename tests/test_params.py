"""params.yaml: the schema rejects every kind of mistake with one line naming the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest

from genpipe import yamlio
from genpipe.cli import main
from genpipe.data.sources import check_source_params
from genpipe.errors import ParamsError
from genpipe.params.load import load_params, parse_params
from genpipe.params.schema import Params, Source
from genpipe.tracking.lineage import run_params

REPO = Path(__file__).resolve().parents[1]


def error_for(raw) -> str:
    with pytest.raises(ParamsError) as excinfo:
        parse_params(raw)
    message = str(excinfo.value)
    assert "\n" not in message
    assert excinfo.value.exit_code == 2
    return message


def test_repo_params_file_loads_and_names_every_schema_key():
    # DVC tracks params by key, so every key of the schema must be written out
    raw = yamlio.load((REPO / "params.yaml").read_text())
    params = load_params(REPO / "params.yaml")
    assert params.data.source == "digits"

    def keys(model, prefix=""):
        for name, info in type(model).model_fields.items():
            key = info.alias or name
            value = getattr(model, name)
            if hasattr(type(value), "model_fields"):
                yield from keys(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    def lookup(path):
        node = raw
        for part in path.split("."):
            node = node[part]
        return node

    for key in keys(Params()):
        lookup(key)  # KeyError names a schema key missing from params.yaml


def test_defaults_fill_missing_sections():
    params = parse_params({"data": {"source": "digits"}})
    assert params.data.image_size == 8
    assert params.validation.min_images_per_split == 100


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"data": {"sourse": "mnist"}}, "data.sourse: unknown key"),
        ({"data": {"sourse": "mnist"}}, "did you mean 'data.source'?"),
        ({"dat": {}}, "did you mean 'data'?"),
        ({"data": {"download": {"retrys": 1}}}, "did you mean 'data.download.retries'?"),
        ({"validate": {"min_image_stdd": 1.0}}, "did you mean 'validate.min_image_std'?"),
    ],
)
def test_unknown_key_names_path_and_suggests(raw, expected):
    assert expected in error_for(raw)


def test_unknown_key_lists_allowed_keys():
    message = error_for({"validate": {"zzz": 1}})
    assert "allowed: max_class_imbalance, max_duplicate_fraction" in message
    assert "did you mean" not in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"seed": "zero"}, "seed: expected a valid integer; got 'zero' (str)"),
        ({"seed": 1.5}, "seed: expected a valid integer; got 1.5 (float)"),
        ({"data": {"test_fraction": "half"}}, "data.test_fraction: expected a valid number"),
        ({"data": {"image_size": "8"}}, "data.image_size: expected one of 8, 16, 28, 32 or 64; "
                                        "got '8' (str)"),
        ({"data": {"channels": True}}, "data.channels: expected a valid integer; got true (bool)"),
        ({"data": {"download": 3}}, "data.download: expected a mapping of keys; got int"),
        ({"data": {"mirrors": "http://a"}}, "data.mirrors: expected a valid list"),
        ({"data": {"sha256": ["a"]}}, "data.sha256: expected a valid dictionary"),
    ],
)  # fmt: skip
def test_wrong_types(raw, expected):
    assert expected in error_for(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"seed": -1}, "seed: expected a value greater than or equal to 0; got -1"),
        ({"data": {"test_fraction": 1.0}}, "data.test_fraction: expected a value less than 1"),
        ({"data": {"test_fraction": 0}}, "data.test_fraction: expected a value greater than 0"),
        ({"data": {"download": {"timeout": 0}}}, "data.download.timeout: expected a value greater"),
        ({"data": {"download": {"retries": -1}}}, "data.download.retries: expected a value"),
        ({"validate": {"max_class_imbalance": 0.5}},
         "validate.max_class_imbalance: expected a value greater than or equal to 1; got 0.5"),
        ({"validate": {"max_duplicate_fraction": 2}},
         "validate.max_duplicate_fraction: expected a value less than or equal to 1; got 2"),
        ({"validate": {"min_images_per_split": 0}},
         "validate.min_images_per_split: expected a value greater than or equal to 1; got 0"),
    ],
)  # fmt: skip
def test_out_of_range(raw, expected):
    assert expected in error_for(raw)


def test_unknown_choice_suggests_the_closest():
    message = error_for({"data": {"source": "mnsit"}})
    assert message.startswith("data.source: expected one of 'digits', 'mnist'")
    assert "got 'mnsit'; did you mean 'mnist'?" in message


def test_image_size_outside_the_allowed_set():
    message = error_for({"data": {"image_size": 30}})
    assert message == "data.image_size: expected one of 8, 16, 28, 32 or 64; got 30"


def test_on_bad_file_choice():
    assert "data.on_bad_file: expected one of 'fail' or 'skip'; got 'ignore'" in error_for(
        {"data": {"on_bad_file": "ignore"}}
    )


@pytest.mark.parametrize("path", [None, ""])
def test_folder_source_requires_a_path(path):
    message = error_for({"data": {"source": "folder", "path": path}})
    assert message.startswith("data.path: expected a directory of images when data.source is")


def test_folder_path_is_not_required_for_other_sources():
    assert parse_params({"data": {"source": "digits", "path": None}}).data.path is None


def test_bad_checksum_and_mirror_values():
    assert "data.sha256.train-images-idx3-ubyte.gz: expected 64 lowercase hex digits" in error_for(
        {"data": {"sha256": {"train-images-idx3-ubyte.gz": "ABC"}}}
    )
    assert "data.mirrors[1]: expected an http(s):// URL; got 'ftp://x/'" in error_for(
        {"data": {"mirrors": ["http://ok/", "ftp://x/"]}}
    )


def test_checksum_override_for_a_file_the_source_lacks():
    params = parse_params({"data": {"source": "mnist", "sha256": {"train.gz": "0" * 64}}})
    with pytest.raises(ParamsError, match=r"data.sha256.train.gz: unknown file \(allowed: t10k"):
        check_source_params(params.data)
    digits = parse_params({"data": {"sha256": {"x.gz": "0" * 64}}})
    with pytest.raises(ParamsError, match="source 'digits' downloads nothing"):
        check_source_params(digits.data)


def test_several_errors_report_the_first_and_a_count():
    message = error_for({"data": {"image_size": 30, "channels": 2}})
    assert message.startswith("data.image_size:")
    assert message.endswith("(and 1 more)")


def test_compile_with_several_processes_is_refused():
    assert error_for({"train": {"compile": True, "nproc_per_node": 2}}) == (
        "train.compile: expected false with train.nproc_per_node above 1 (torch.compile of "
        "the DDP step is not supported); got true"
    )
    assert parse_params({"train": {"compile": True}}).train.compile  # one process compiles


@pytest.mark.parametrize(
    ("train", "group", "per_process"),
    [({"batch_size": 64}, 1, 64), ({"batch_size": 30}, 4, 30),
     ({"batch_size": 16, "nproc_per_node": 2}, 16, 8)],
)  # fmt: skip
def test_a_minibatch_std_group_must_split_each_process_batch(train, group, per_process):
    assert error_for({"train": train, "gan": {"minibatch_std": group}}) == (
        "gan.minibatch_std: expected 0 (off) or a group size of at least 2 that divides each "
        f"process's batch of {per_process}; got {group}"
    )
    ok = parse_params({"train": {**train, "batch_size": 16}, "gan": {"minibatch_std": 4}})
    assert ok.gan.minibatch_std == 4


def test_not_a_mapping():
    assert error_for(["data"]) == "params: expected a mapping of sections; got list"


def test_file_errors(tmp_path):
    with pytest.raises(ParamsError, match=r"expected a params file, .*; found none"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  source: [digits\n")
    with pytest.raises(ParamsError, match="expected valid YAML; found a syntax error at line"):
        load_params(bad)



# a params file that is not a text mapping: what it is instead, in one line, exit 2
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "found an empty file (or comments only)"),
        (b"# only a comment\n", "found an empty file (or comments only)"),
        (b"\xf8\x00\xff binary", "found bytes that are not UTF-8 text (at byte 0)"),
        (b"seed: 1\nseed: 2\n", "expected each key once; found a duplicate key at line 2: 'seed'"),
        (b"- data\n", "expected a mapping of sections; got list"),
    ],
    ids=["empty", "comments only", "binary", "duplicate key", "a list"],
)
def test_a_params_file_that_is_not_a_text_mapping_is_one_line(tmp_path, content, expected):
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    with pytest.raises(ParamsError) as excinfo:
        load_params(path)
    assert expected in str(excinfo.value) and "\n" not in str(excinfo.value)
    assert excinfo.value.exit_code == 2


@pytest.mark.parametrize("where", ["a directory", "/dev/null"])
def test_genpipe_params_on_a_directory_or_dev_null_is_one_line(tmp_path, capsys, where):
    path = tmp_path if where == "a directory" else Path("/dev/null")
    with pytest.raises(SystemExit) as excinfo:
        main(["params", "--file", str(path)])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err.strip()
    found = "found a directory" if where == "a directory" else "found an empty file"
    assert err.startswith("error: ") and found in err and "\n" not in err


def test_every_source_is_a_valid_choice():
    for source in get_args(Source):
        extra = {"path": "somewhere"} if source == "folder" else {}
        assert parse_params({"data": {"source": source, **extra}}).data.source == source


def test_genpipe_params_command(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("data:\n  image_size: 16\n")
    main(["params", "--file", str(good)])
    shown = json.loads(capsys.readouterr().out)
    assert shown["data"]["image_size"] == 16
    assert shown["validate"]["min_images_per_split"] == 100  # defaults filled in, by alias

    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  image_size: 30\n")
    with pytest.raises(SystemExit) as excinfo:
        main(["params", "--file", str(bad)])
    assert excinfo.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: data.image_size: expected one of 8, 16, 28, 32 or 64; got 30"
    )


def test_yaml_1_2_numbers_as_dvc_reads_them(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("gan:\n  lr_g: 1e-4\n")  # a string to YAML 1.1 (PyYAML), a float to DVC
    assert load_params(path).gan.lr_g == 1e-4


def test_errors_are_one_line_whatever_they_quote():
    from genpipe.errors import GenpipeError, exception_text

    quoted = exception_text(ValueError("first line\n  second line"))
    assert str(GenpipeError(f"x.tar: corrupt ({quoted})")) == (
        "x.tar: corrupt (ValueError: first line second line)"
    )


@pytest.mark.integration
def test_genpipe_params_into_a_closed_pipe_exits_quietly(tmp_path):
    """`genpipe params | head -3`: the reader goes away before the output is written."""
    import subprocess
    import sys

    (tmp_path / "params.yaml").write_text("seed: 0\n")
    code = "from genpipe.cli import main; main(['params'])"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    proc.stdout.close()  # long before the output: importing the schema takes a while
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_data_path_null_is_refused_before_dvc_reads_it(tmp_path, capsys):
    """dvc.yaml interpolates data.path into fetch's deps: DVC stops on a null with only
    "unexpected error", before the params stage can run, so `genpipe params` (which
    `make run` and `genpipe ci-retrain` run first) names it."""
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  source: mnist\n  path: null\n")
    assert load_params(path).data.path is None  # the schema alone lets it through
    with pytest.raises(SystemExit) as excinfo:
        main(["params", "--file", str(path)])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.path: expected a path for DVC to track") and "\n" not in err


@pytest.mark.parametrize(
    ("data", "read", "ignored"),
    [
        ({"source": "digits"}, {"test_fraction"}, {"path", "mirrors", "local", "background"}),
        ({"source": "folder", "path": "images"}, {"path", "background", "on_bad_file"},
         {"mirrors", "download", "local", "sha256"}),
        ({"source": "fashion-mnist"}, {"mirrors", "download", "local", "sha256"},
         {"path", "test_fraction", "background"}),
        ({"source": "mnist", "local": True, "path": "/data/mnist"}, {"path", "local"},
         {"mirrors", "download", "test_fraction"}),
    ],
)  # fmt: skip
def test_a_run_logs_its_own_model_and_the_data_keys_its_source_reads(data, read, ignored):
    params = Params.model_validate({"data": data}).model_dump(mode="json", by_alias=True)
    for model, other in (("gan", "autoencoder"), ("autoencoder", "gan")):
        logged = run_params(params, model)
        assert set(logged) == {"seed", "cpu_kernels", "data", "train", model, "evaluate"}
        assert other not in logged and logged[model] == params[model]
        assert read <= set(logged["data"]) and not ignored & set(logged["data"])
        assert {"source", "image_size", "channels"} <= set(logged["data"])


def test_the_training_seed_is_train_seed_else_the_seed():
    assert parse_params({"seed": 3}).training_seed == 3
    assert parse_params({"seed": 3, "train": {"seed": 5}}).training_seed == 5
    with pytest.raises(ParamsError, match="train.seed"):
        parse_params({"train": {"seed": -1}})


# --- every number bounded and finite (issue: values the schema accepted, then crashed) ------

# value -> the one line; each was accepted before and crashed, hung or allocated terabytes
# fmt: off
BOUNDED = {
    "seed 2**63": ({"seed": 2**63}, "seed: expected a value less than or equal to "
                                    "9223372036854775807; got 9223372036854775808"),
    "train.seed 2**64": ({"train": {"seed": 2**64}}, "train.seed: expected a value less than"),
    "cpu_threads 100000": ({"train": {"cpu_threads": 100_000}},
                           "train.cpu_threads: expected a value less than or equal to 256"),
    "evaluate.cpu_threads": ({"evaluate": {"cpu_threads": 4096}}, "evaluate.cpu_threads"),
    "gan.width 1e9": ({"gan": {"width": 10**9}}, "gan.width: expected a value less than or "
                                                 "equal to 2048; got 1000000000"),
    "gan.depth 1e8": ({"gan": {"depth": 10**8}}, "gan.depth: expected a value less than"),
    "gan.z_dim": ({"gan": {"z_dim": 10**24}}, "gan.z_dim: expected a value less than"),
    "autoencoder.width": ({"autoencoder": {"width": 10**5}}, "autoencoder.width"),
    "kid_subsets 1e21": ({"evaluate": {"kid_subsets": 10**21}},
                         "evaluate.kid_subsets: expected a value less than"),
    "dist_timeout_s inf": ({"train": {"dist_timeout_s": float("inf")}},
                           "train.dist_timeout_s: expected a finite number; got inf"),
    "download.backoff 1e300": ({"data": {"download": {"backoff": 1e300}}},
                               "data.download.backoff: expected a value less than or equal to"),
    "download.timeout inf": ({"data": {"download": {"timeout": float("inf")}}},
                             "data.download.timeout: expected a finite number"),
    "download.retries 1e30": ({"data": {"download": {"retries": 10**30}}},
                              "data.download.retries: expected a value less than"),
    "lr nan": ({"gan": {"lr_g": float("nan")}}, "gan.lr_g: expected a finite number; got nan"),
    "nproc_per_node": ({"train": {"nproc_per_node": 100_000}}, "train.nproc_per_node"),
    "steps": ({"gan": {"steps": 10**12}}, "gan.steps: expected a value less than"),
    "batch_size": ({"train": {"batch_size": 10**9}}, "train.batch_size"),
    "num_samples": ({"evaluate": {"num_samples": 10**12}}, "evaluate.num_samples"),
    "domain.feature_dim": ({"evaluate": {"domain": {"feature_dim": 10**6}}},
                           "evaluate.domain.feature_dim"),
}
# fmt: on


@pytest.mark.parametrize("case", BOUNDED.values(), ids=BOUNDED.keys())
def test_out_of_bounds_values_are_one_line(case):
    raw, expected = case
    assert error_for(raw).startswith(expected)


def test_every_number_in_the_schema_has_an_upper_bound():
    """A new numeric key without `le`/`lt` fails here: every number must be one the code can
    honour (floats are finite by the Section config)."""
    from annotated_types import Le, Lt
    from pydantic import BaseModel

    from genpipe.params.configs import AutoEncoderConfig, DomainConfig, GeneratorConfig

    unbounded = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            kinds = get_args(field.annotation) or (field.annotation,)
            sections = [k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)]
            if sections:
                walk(sections[0], f"{prefix}{name}.")
            elif {int, float} & set(kinds) and not any(
                isinstance(m, Le | Lt) for m in field.metadata
            ):
                unbounded.append(prefix + name)

    for model in (Params, GeneratorConfig, AutoEncoderConfig, DomainConfig):
        walk(model, f"{model.__name__}.")
    assert unbounded == []


def test_the_bounds_hold_the_defaults_and_the_preset():
    preset = yamlio.load((REPO / "examples/fashion-mnist/params.yaml").read_text())
    assert parse_params(preset).evaluate.num_samples == 10_000
    assert parse_params({"seed": 2**63 - 1}).seed == 2**63 - 1


@pytest.mark.parametrize(("models", "says"), [
    ([], "models: expected one or more of gan, autoencoder; got []"),
    (["gan", "gan"], "models: expected each model once; got gan more than once"),
    (["gan", "autoencoder", "autoencoder"], "got autoencoder more than once"),
])  # fmt: skip
def test_an_empty_or_repeated_models_list_is_refused_naming_the_key(models, says):
    assert says in error_for({"models": models})
    assert parse_params({"models": ["autoencoder"]}).models == ["autoencoder"]
