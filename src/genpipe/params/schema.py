"""The typed schema of params.yaml: one pydantic model a section, each forbidding unknown
keys, with every number bounded and finite. The value lists a key may take are the
Literal types here; code that needs a list asks typing.get_args."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

Source = Literal["digits", "mnist", "fashion-mnist", "cifar10", "folder"]
ImageSize = Literal[8, 16, 28, 32, 64]
GanLoss = Literal["non-saturating", "hinge", "wgan-gp"]
AutoencoderKind = Literal["ae", "vae"]
LrDecay = Literal["none", "linear", "cosine"]
ModelName = Literal["gan", "autoencoder"]  # the packages genpipe/<model>/ (models.py)
MODELS: tuple[str, ...] = get_args(ModelName)


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


# what goes into an #SBATCH line: Slurm's own spellings, nothing a shell would read
SLURM_TIME = r"^(\d+-)?\d+(:\d{1,2}){0,2}$"  # minutes, M:S, H:M:S, D-H, D-H:M, D-H:M:S
SLURM_MEMORY = r"^\d+[KMGT]?$"  # per node; no unit: megabytes
SLURM_WORD = r"^[A-Za-z0-9][A-Za-z0-9_.:,=+-]*$"  # a partition, a gres list, an account


class SweepParams(Section):
    """`genpipe sweep`: the engine its tasks run on by default, and what each Slurm task asks
    for (its #SBATCH lines; the flags of the same names win)."""

    engine: Literal["local", "slurm"] = "local"
    max_parallel: int | None = Field(None, ge=1, le=100_000)  # tasks at once; null: no cap
    partition: str | None = Field(None, pattern=SLURM_WORD, max_length=200)
    time: str = Field("04:00:00", pattern=SLURM_TIME, max_length=20)  # each task's limit
    cpus_per_task: int = Field(2, ge=1, le=4096)
    mem: str = Field("8G", pattern=SLURM_MEMORY, max_length=20)
    gres: str | None = Field(None, pattern=SLURM_WORD, max_length=200)  # gpu:1
    account: str | None = Field(None, pattern=SLURM_WORD, max_length=200)
    git_remote: str = Field("origin", pattern=SLURM_WORD, max_length=200)  # the tasks clone
    # where each task clones and runs (null: $TMPDIR on the node, else /tmp); its checkpoints
    # live apart from it (null: sweeps/<id>/checkpoints/, which the nodes must share)
    scratch: str | None = Field(None, min_length=1, max_length=4096)
    checkpoints: str | None = Field(None, min_length=1, max_length=4096)


class Params(Section):
    seed: int = Field(0, ge=0, le=MAX_SEED)
    # avx2: the CPU kernels pinned to one ISA, so any x86-64 machine with AVX2 gives the same
    # bits (runtime.pin_cpu_kernels); native: fastest here, bits tied to the CPU model
    cpu_kernels: Literal["avx2", "native"] = "avx2"
    models: list[ModelName] = list(MODELS)
    data: DataParams = DataParams()
    # `validate` would shadow BaseModel.validate, hence the alias.
    validation: ValidateParams = Field(ValidateParams(), alias="validate")
    train: TrainParams = TrainParams()
    gan: GanParams = GanParams()
    autoencoder: AutoencoderParams = AutoencoderParams()
    evaluate: EvaluateParams = EvaluateParams()
    # `register` would shadow the metaclass's ABC register, hence the alias
    registry: RegisterParams = Field(RegisterParams(), alias="register")
    sweep: SweepParams = SweepParams()

    @property
    def training_seed(self) -> int:
        """What seeds training: train.seed, else the global seed."""
        return self.seed if self.train.seed is None else self.train.seed

