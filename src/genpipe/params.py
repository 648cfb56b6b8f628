"""The typed schema of params.yaml.

Every section is a pydantic model that forbids unknown keys, so a typo fails
before any output is touched, with the key path, what is allowed and what was
found, on one line (``ParamsError``, exit code 2).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from genpipe import paths
from genpipe.errors import ParamsError

# the value lists a key may take; code that needs a list asks typing.get_args
Source = Literal["digits", "mnist", "fashion-mnist", "cifar10", "folder"]
ImageSize = Literal[8, 16, 28, 32, 64]
GanLoss = Literal["non-saturating", "hinge", "wgan-gp"]
AutoencoderKind = Literal["ae", "vae"]
LrDecay = Literal["none", "linear", "cosine"]


def _reject_bool(value: Any) -> Any:
    # True == 1, so without this `channels: true` would pass as Literal[1, 3]
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


NoBool = BeforeValidator(_reject_bool)


# --- bounds: what the code can honour, for params.yaml and config.json alike -------------
# Every number has an upper bound and is finite (Section refuses inf and nan): a value the
# schema accepts must not crash, hang or allocate terabytes later.
MAX_SEED = 2**63 - 1  # numpy and torch take 64-bit seeds; torch wraps 2**64 to 0
MAX_THREADS = 256  # OpenMP threads; far more fail to map their stacks
MAX_PROCESSES = 256  # train.nproc_per_node
MAX_STEPS = 100_000_000
MAX_BATCH = 65_536
MAX_WIDTH = 2048  # feature maps: a GAN of width 2048 at 64 px holds about 1.5 GB of weights
MAX_DEPTH = 16  # extra conv layers per resolution
MAX_LATENT = 4096  # z_dim, latent_dim, feature_dim
MAX_CLASSES = 10_000  # a conditional generator's classes, the domain network's
MAX_LR = 10.0
MAX_WEIGHT = 1e6  # loss weights
MAX_SECONDS = 86_400.0  # a day: timeouts and backoffs
MAX_RETRIES = 100
MAX_IMAGES = 100_000_000  # image counts: samples compared, train images checked
MAX_KID_SUBSETS = 100_000


class Section(BaseModel):
    # strict: YAML already gives typed values, so "8" for an int is a mistake. No inf or nan.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class DownloadParams(Section):
    timeout: float = Field(30.0, gt=0, le=MAX_SECONDS)  # seconds per request (connect, read)
    retries: int = Field(3, ge=0, le=MAX_RETRIES)  # extra attempts per mirror, transient failures
    # seconds before the first retry, doubled each retry (each wait at most MAX_SECONDS)
    backoff: float = Field(1.0, ge=0, le=MAX_SECONDS)


class DataParams(Section):
    source: Source = "digits"
    # folder source: directory of images, optionally in class subfolders;
    # with `local`: the directory holding the official files
    path: str | None = None
    # mnist, fashion-mnist, cifar10: read the official files from `path`, download nothing
    local: bool = False
    image_size: Annotated[ImageSize, NoBool] = 8
    channels: Annotated[Literal[1, 3], NoBool] = 1
    # sources without an official split (digits, folder) split by content hash
    test_fraction: float = Field(0.2, gt=0, lt=1)
    on_bad_file: Literal["fail", "skip"] = "fail"
    # folder: larger images are bad files (Pillow's decompression-bomb limit by default)
    max_image_pixels: int = Field(89_478_485, gt=0, le=2**40)
    # folder: what transparent pixels are composited onto before the grey/RGB conversion
    background: Literal["white", "black"] = "white"
    mirrors: list[str] | None = None  # base URLs tried in order; null: the source's own
    sha256: dict[str, str] = {}  # file name -> SHA-256, overrides the pinned checksums
    download: DownloadParams = DownloadParams()


class ValidateParams(Section):
    min_images_per_split: int = Field(100, ge=1, le=MAX_IMAGES)
    # within each split: count of the most frequent class / the least frequent
    max_class_imbalance: float = Field(2.0, ge=1, le=1e9)
    max_duplicate_fraction: float = Field(0.01, ge=0, le=1)
    # images whose pixel standard deviation is below this are flagged as blank
    min_image_std: float = Field(1.0, ge=0, le=255)


class TrainParams(Section):
    """Shared by every model's training stage."""

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto: cuda, then mps, then cpu
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, else fp32
    compile: bool = False  # torch.compile the networks
    # on CUDA, replay each GAN step as one CUDA graph (not with fp16 or compile)
    cuda_graphs: bool = True
    # CPU threads for training; 0: torch's default (all cores). Small networks run fastest,
    # and are least sensitive to a busy machine, on one thread.
    cpu_threads: int = Field(1, ge=0, le=MAX_THREADS)
    # the global batch: split evenly among the processes
    batch_size: int = Field(128, ge=1, le=MAX_BATCH)
    # processes on this machine, each with its slice of every batch (torchrun, DDP); the
    # stage relaunches itself under torch's launcher when above 1
    nproc_per_node: int = Field(1, ge=1, le=MAX_PROCESSES)
    # seconds a process waits on the others (a collective, a barrier) before the run fails
    dist_timeout_s: float = Field(300.0, gt=0, le=MAX_SECONDS)
    checkpoint_every: int = Field(500, ge=1, le=MAX_STEPS)  # steps between checkpoints
    log_every: int = Field(50, ge=1, le=MAX_STEPS)  # steps between logged metrics
    # the training seed (initial weights, batches, noise); null: `seed`. Another value
    # retrains the models against the same reference (`seed` also trains the domain network)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    # prefix of the MLflow experiments, one a model: <experiment>-<model> (genpipe-gan)
    experiment: str = Field("genpipe", min_length=1, max_length=200)


class GanParams(Section):
    steps: int = Field(2000, ge=1, le=MAX_STEPS)
    z_dim: int = Field(64, ge=1, le=MAX_LATENT)
    width: int = Field(64, ge=1, le=MAX_WIDTH)  # feature maps of the widest layer
    depth: int = Field(1, ge=0, le=MAX_DEPTH)  # extra 3x3 conv layers per resolution
    loss: GanLoss = "non-saturating"
    spectral_norm: bool = False  # in the discriminator
    lr_g: float = Field(2e-4, gt=0, le=MAX_LR)
    lr_d: float = Field(2e-4, gt=0, le=MAX_LR)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    d_steps: int = Field(1, ge=1, le=100)  # discriminator updates per generator update
    gp_weight: float = Field(10.0, ge=0, le=MAX_WEIGHT)  # wgan-gp gradient penalty
    # R1: r1_weight / 2 * E ||grad D(real)||^2; 0: off
    r1_weight: float = Field(0.0, ge=0, le=MAX_WEIGHT)
    lr_decay: LrDecay = "none"  # lr_g and lr_d over the steps
    ema_decay: float = Field(0.999, ge=0, lt=1)  # EMA of the generator, used for evaluation
    # batches of noise (train.batch_size each) on which the EMA generator's BatchNorm running
    # statistics are recomputed for its own weights after training; 0: the live G's, copied
    ema_bn_batches: int = Field(50, ge=0, le=100_000)
    # class-conditional on the data's labels: G takes a label beside z, D projects it on
    # its features; samples take labels in the train split's class shares
    conditional: bool = False
    # group size of the discriminator's minibatch standard deviation feature (ProGAN: 4),
    # which lets it see a batch's variety; 0: off
    minibatch_std: int = Field(0, ge=0, le=MAX_BATCH)


class AutoencoderParams(Section):
    steps: int = Field(3000, ge=1, le=MAX_STEPS)
    kind: AutoencoderKind = "ae"
    latent_dim: int = Field(16, ge=1, le=MAX_LATENT)
    width: int = Field(32, ge=1, le=MAX_WIDTH)  # feature maps of the first encoder layer
    depth: int = Field(0, ge=0, le=MAX_DEPTH)  # extra 3x3 conv layers per resolution
    lr: float = Field(1e-3, gt=0, le=MAX_LR)
    lr_decay: LrDecay = "none"  # lr over the steps, down to 0
    kl_weight: float = Field(1.0, ge=0, le=MAX_WEIGHT)  # vae: weight of the KL term
    # weight of (1 - SSIM) beside the per-pixel MSE in the loss (SSIM as evaluation scores it)
    ssim_weight: float = Field(0.0, ge=0, le=MAX_WEIGHT)


class DomainParams(Section):
    """The offline feature network: a small CNN classifier that the reference stage trains
    on the train split's labels; FID and the other metrics use its penultimate features."""

    steps: int = Field(1200, ge=1, le=MAX_STEPS)
    width: int = Field(32, ge=1, le=MAX_WIDTH)  # feature maps of the first conv layer
    # the penultimate layer: the features compared
    feature_dim: int = Field(128, ge=2, le=MAX_LATENT)
    batch_size: int = Field(128, ge=1, le=MAX_BATCH)
    lr: float = Field(2e-3, gt=0, le=MAX_LR)  # peak: cosine-annealed to 0 over the steps
    # held-out (test split) accuracy below this fails the reference stage: features of a
    # network that cannot tell the classes apart say little about image quality
    min_accuracy: float = Field(0.9, ge=0, le=1)


class EvaluateParams(Section):
    """Shared by the reference stage and every model's evaluate stage."""

    # domain: offline, trained on the labels; inception: the standard FID network (weights file)
    backbone: Literal["domain", "inception"] = "domain"
    inception_weights: str | None = None  # pt_inception-2015-12-05-6726825d.pth; or the env var
    # generated images; null: the test split's size
    num_samples: int | None = Field(None, ge=2, le=MAX_IMAGES)
    batch_size: int = Field(256, ge=1, le=MAX_BATCH)  # feature extraction
    kid_subsets: int = Field(100, ge=1, le=MAX_KID_SUBSETS)
    # at most; at most half the smaller side
    kid_subset_size: int = Field(1000, ge=2, le=MAX_IMAGES)
    pr_k: int = Field(3, ge=1, le=1000)  # precision/recall, density/coverage: k-th neighbour radius
    # FID's spread: the std over this many bootstrap resamples of the scored images' features
    # (the draw of samples); 0: no fid_std
    bootstraps: int = Field(20, ge=0, le=1000)
    # the GAN's memorisation check: the train images whose features the reference keeps
    # (null: all; N: a seeded subsample of N, for a backbone too slow for all), and the
    # percentile of the test images' nearest-train distances under which a sample is a copy
    memorisation_images: int | None = Field(None, ge=1, le=MAX_IMAGES)
    memorisation_percentile: float = Field(1.0, gt=0, lt=50)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    cpu_threads: int = Field(1, ge=0, le=MAX_THREADS)  # as train.cpu_threads
    domain: DomainParams = DomainParams()


class RegisterParams(Section):
    """The MLflow Model Registry and its champion gate."""

    name_prefix: str = Field("genpipe", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=200)
    # a new version becomes champion when its primary metric (GAN: FID, autoencoder: test
    # MSE) is lower than the champion's by at least this share
    min_improvement: float = Field(0.01, ge=0, lt=1)
    force: bool = False  # promote without comparing with the champion at all
    # the branch whose registers move champion and challenger; any other registers under
    # an alias of its own, candidate-<branch> (the branch: $GENPIPE_BRANCH, else git's)
    default_branch: str = Field("main", min_length=1, max_length=255)
    # ... and by more than noise_z times the combined evaluation noise of the two figures,
    # sqrt(std_new^2 + std_champion^2) (their <metric>_std); 0: min_improvement alone
    noise_z: float = Field(2.0, ge=0, le=10)


MODELS = ("gan", "autoencoder")


# --- config.json: the networks' constructor kwargs, beside their weights -----------------
# A file genpipe did not necessarily write: held to the params' bounds before any network
# is built (weights.build_network), so a width of 1e9 is one line, not a 4 TB allocation.


class GeneratorConfig(Section):
    image_size: Annotated[ImageSize, NoBool]
    channels: Annotated[Literal[1, 3], NoBool]
    z_dim: int = Field(ge=1, le=MAX_LATENT)
    width: int = Field(ge=1, le=MAX_WIDTH)
    depth: int = Field(0, ge=0, le=MAX_DEPTH)
    class_weights: list[Annotated[float, Field(gt=0, le=1)]] | None = Field(
        None, min_length=1, max_length=MAX_CLASSES
    )


class AutoEncoderConfig(Section):
    image_size: Annotated[ImageSize, NoBool]
    channels: Annotated[Literal[1, 3], NoBool]
    latent_dim: int = Field(ge=1, le=MAX_LATENT)
    width: int = Field(ge=1, le=MAX_WIDTH)
    depth: int = Field(0, ge=0, le=MAX_DEPTH)
    kind: AutoencoderKind = "ae"


class DomainConfig(Section):
    image_size: Annotated[ImageSize, NoBool]
    channels: Annotated[Literal[1, 3], NoBool]
    num_classes: int = Field(ge=2, le=MAX_CLASSES)
    width: int = Field(ge=1, le=MAX_WIDTH)
    feature_dim: int = Field(ge=2, le=MAX_LATENT)


def check_config(schema: type[Section], config: Any, key: str) -> dict[str, Any]:
    """A network's config.json entry held to `schema`; ValueError with one line naming
    `key`.<field>, what it allows and what it found."""
    if not isinstance(config, dict):
        raise ValueError(f"{key}: expected a mapping of keys; got {_kind(config)}")
    try:
        return schema.model_validate(config).model_dump()
    except ValidationError as exc:
        raise ValueError(f"{key}.{_describe(exc)}") from None


class Params(Section):
    seed: int = Field(0, ge=0, le=MAX_SEED)
    # avx2: the CPU kernels pinned to one ISA, so any x86-64 machine with AVX2 gives the same
    # bits (runtime.pin_cpu_kernels); native: fastest here, bits tied to the CPU model
    cpu_kernels: Literal["avx2", "native"] = "avx2"
    models: list[Literal["gan", "autoencoder"]] = list(MODELS)
    data: DataParams = DataParams()
    # `validate` would shadow BaseModel.validate, hence the alias.
    validation: ValidateParams = Field(ValidateParams(), alias="validate")
    train: TrainParams = TrainParams()
    gan: GanParams = GanParams()
    autoencoder: AutoencoderParams = AutoencoderParams()
    evaluate: EvaluateParams = EvaluateParams()
    # `register` would shadow the metaclass's ABC register, hence the alias
    registry: RegisterParams = Field(RegisterParams(), alias="register")

    @property
    def training_seed(self) -> int:
        """What seeds training: train.seed, else the global seed."""
        return self.seed if self.train.seed is None else self.train.seed


# the data keys each kind of source reads (beside source, image_size and channels)
_DATA_READ = {
    "digits": ("test_fraction",),
    "folder": ("path", "test_fraction", "on_bad_file", "max_image_pixels", "background"),
    "official": ("local", "sha256"),  # mnist, fashion-mnist, cifar10: their own split
    "official-local": ("path",),
    "official-download": ("mirrors", "download"),
}


def recipe_params(run_params: dict[str, Any]) -> dict[str, Any]:
    """A run's params (run_params) without its seeds: runs of one recipe differ only in
    `seed` and `train.seed`."""
    recipe = {k: v for k, v in run_params.items() if k != "seed"}
    if "train" in recipe:
        recipe["train"] = {k: v for k, v in recipe["train"].items() if k != "seed"}
    return recipe


def run_params(params: dict[str, Any], model: str) -> dict[str, Any]:
    """What shapes `model`'s run, as params.yaml spells it (params: Params.model_dump(
    by_alias=True)): seed, cpu_kernels, the data keys its source reads, train, the model's
    own section and evaluate. A run logs these, never the other model's section, and never
    a data key its source ignores (the digits read no data.path)."""
    data = params["data"]
    if data["source"] in ("digits", "folder"):
        read = _DATA_READ[data["source"]]
    else:
        where = "official-local" if data["local"] else "official-download"
        read = _DATA_READ["official"] + _DATA_READ[where]
    keep = ("source", "image_size", "channels", *read)
    return {
        "seed": params["seed"],
        "cpu_kernels": params["cpu_kernels"],
        "data": {key: data[key] for key in keep},
        "train": params["train"],
        model: params[model],
        "evaluate": params["evaluate"],
    }


def load_params(path: Path | str = paths.PARAMS) -> Params:
    """Read and check params.yaml; raise ParamsError with one line on any mistake."""
    path = Path(path)
    return parse_params(_read_yaml(path), source=str(path))


def load_checked_params(path: Path | str = paths.PARAMS) -> Params:
    """params.yaml checked against the schema, and against what dvc.yaml needs of it before
    any stage runs: DVC interpolates `data.path` into fetch's deps while it reads dvc.yaml,
    and a null there stops it with only "unexpected error" (the params stage never runs)."""
    path = Path(path)
    raw = _read_yaml(path)
    params = parse_params(raw, source=str(path))
    data = raw.get("data") or {}
    if "path" in data and data["path"] is None:  # written as null (a missing key: DVC says so)
        raise ParamsError(
            "data.path: expected a path for DVC to track as fetch's dependency (dvc.yaml "
            "interpolates it; keep examples/images when the source reads no folder); got null"
        )
    return params


def _read_yaml(path: Path) -> Any:
    """The file's YAML as DVC reads it: a mapping of sections, or one line saying what the
    file is instead (none, a directory, not UTF-8 text, not YAML, empty)."""
    from ruamel.yaml import YAML, YAMLError
    from ruamel.yaml.constructor import DuplicateKeyError

    expected = f"{path}: expected a params file, a YAML mapping of sections (seed, data, ...)"
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{expected}; found none") from None
    except IsADirectoryError:
        raise ParamsError(f"{expected}; found a directory") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{expected}; found bytes that are not UTF-8 text (at byte "
                          f"{exc.start})") from None  # fmt: skip
    except OSError as exc:
        raise ParamsError(f"{expected}; could not read it ({exc.strerror or exc})") from None
    try:
        # YAML 1.2, as DVC reads it: `1e-4` is a number and `yes` is a string
        raw = YAML(typ="safe", pure=True).load(text)
    except DuplicateKeyError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: expected each key once; found a duplicate key{where}: "
                          f"{_duplicate(exc)}") from None  # fmt: skip
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: expected valid YAML; found a syntax error{where}") from None
    if raw is None:  # dvc.yaml interpolates ${models} and ${data.path}: DVC needs them
        raise ParamsError(f"{expected}; found an empty file (or comments only)")
    return raw


def _duplicate(exc: Exception) -> str:
    """The duplicated key's name, from ruamel's message: 'found duplicate key "seed" ...'."""
    found = re.search(r'duplicate key "([^"]*)"', str(exc))
    return repr(found[1]) if found else "(unnamed)"


def parse_params(raw: Any, source: str = "params") -> Params:
    """Check a params mapping against the schema (and the rules that span keys)."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections; got {_kind(raw)}")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_describe(exc)) from None
    _check_context(params)
    return params


def _check_context(params: Params) -> None:
    """Rules that depend on more than one key."""
    data = params.data
    if data.source == "folder" and not data.path:
        raise ParamsError(
            "data.path: expected a directory of images when data.source is 'folder'; "
            f"got {_show(data.path)}"
        )
    if data.local:
        _check_local(data)
    for name, digest in data.sha256.items():
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ParamsError(
                f"data.sha256.{name}: expected 64 lowercase hex digits; got {digest!r}"
            )
    for i, url in enumerate(data.mirrors or []):
        if not re.match(r"https?://", url):
            raise ParamsError(f"data.mirrors[{i}]: expected an http(s):// URL; got {url!r}")
    if params.train.compile and params.train.nproc_per_node > 1:
        raise ParamsError(COMPILE_DDP.format(where="with train.nproc_per_node above 1"))
    train, group = params.train, params.gan.minibatch_std
    per_process = train.batch_size // train.nproc_per_node  # not a whole number: refused at launch
    if group == 1 or (group and per_process % group):
        raise ParamsError(minibatch_group_error(group, per_process))


def minibatch_group_error(group: int, per_process: int) -> str:
    """gan.minibatch_std's groups split each process's batch evenly, as one process would."""
    return (f"gan.minibatch_std: expected 0 (off) or a group size of at least 2 that divides "
            f"each process's batch of {per_process}; got {group}")  # fmt: skip


# torch.compile of the DDP step: on the CPU torch's compiled DDP crashed (free(): invalid
# pointer, torch 2.13, gloo), and its backward kept a BatchNorm running mean that the step
# then updates in place. Refused, not left to fail mid-run
COMPILE_DDP = (
    "train.compile: expected false {where} (torch.compile of the DDP step is not supported); "
    "got true"
)


def _check_local(data: DataParams) -> None:
    """data.local reads an official source's files from the directory data.path."""
    if data.source in ("digits", "folder"):
        raise ParamsError(
            "data.local: expected false for source "
            f"{data.source!r} (only mnist, fashion-mnist and cifar10 have official files "
            "to read from data.path); got true"
        )
    expected = f"a directory holding {data.source}'s official files when data.local is true"
    if not data.path:
        raise ParamsError(f"data.path: expected {expected}; got {_show(data.path)}")
    path = Path(data.path)
    if not path.is_dir():
        found = "a file" if path.exists() else "nothing"
        raise ParamsError(f"data.path: expected {expected}; found {found} at {path}")


def _describe(exc: ValidationError) -> str:
    """One line for the first error: key path, what is allowed, what was found."""
    errors = exc.errors()
    err = errors[0]
    loc = [part for part in err["loc"] if not isinstance(part, str) or part != "__root__"]
    key = _key_path(loc)
    found = err.get("input")
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = sorted(_field_names(parent)) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean '{_key_path([*loc[:-1], close[0]])}'?" if close else ""
        line = f"{key}: unknown key (allowed: {', '.join(allowed)}){hint}"
    elif kind == "literal_error":
        choices = err["ctx"]["expected"]
        close = difflib.get_close_matches(str(found), [c.strip("'") for c in _choices(err)], n=1)
        if close and close[0] != str(found):
            hint = f"; did you mean '{close[0]}'?"
        else:
            hint = f" ({_kind(found)})" if close else ""
        line = f"{key}: expected one of {choices}; got {_show(found)}{hint}"
    elif kind == "missing":
        line = f"{key}: required key is missing"
    elif kind == "model_type":
        line = f"{key}: expected a mapping of keys; got {_kind(found)}"
    else:
        # pydantic says "Input should be greater than 0": reword as "expected ..."
        expected = re.sub(r"^Input should (be )?", "", err["msg"])
        expected = re.sub(r"^(greater|less) ", r"a value \1 ", expected)
        line = f"{key}: expected {expected}; got {_show(found)}"
        if kind.endswith("_type"):
            line += f" ({_kind(found)})"
    if len(errors) > 1:
        line += f" (and {len(errors) - 1} more)"
    return line


def _choices(err: dict[str, Any]) -> list[str]:
    return [c.strip() for c in re.split(r",| or ", err["ctx"]["expected"]) if c.strip()]


def _key_path(loc: list[Any]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _field_names(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_at(loc: list[Any]) -> type[BaseModel] | None:
    """The section model that sits at a key path, for listing its allowed keys."""
    model: type[BaseModel] = Params
    for part in loc:
        fields = {info.alias or name: info for name, info in model.model_fields.items()}
        info = fields.get(part)
        annotation = info.annotation if info else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _show(value: Any) -> str:
    """A value as it would be written in YAML."""
    if value is None or isinstance(value, bool):
        return yaml.safe_dump(value).split("\n")[0]
    return repr(value)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
