"""Typed, validated configuration: one source of truth, printed and saved beside every output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deepsalt.spectra.bands import EXCLUDED_BANDS

#: ECe range (dS/m) every model predicts in and the cube declares: the bounded head's limits
OUT_RANGE: tuple[float, float] = (0.05, 77.0)

class QualityLayer(NamedTuple):
    """An EnMAP L2A quality layer: its STAC asset key, the file suffix in DLR's products, the role DLR's STAC items
    tag it with, and the values that mask a pixel."""

    asset: str
    suffix: str
    role: str
    masked: tuple[int, ...]
    what: str


#: The L2A quality layers DeepSalt can apply, by the name ``--quality-masks`` takes. Values as DLR's products use
#: them (read by HySpecNet-11k's documentation of DLR L2A tiles and by GFZ's EnPT, ``mask_landwater == 2`` is
#: water): cloud, cloud shadow, haze and snow are 0/1; cirrus is 0 none, 1 thin, 2 medium, 3 thick;
#: QL_QUALITY_CLASSES is 1 land, 2 water, 3 background (outside the swath; DLR's STAC items declare 3 as its nodata).
QUALITY_LAYERS: dict[str, QualityLayer] = {
    "cloud": QualityLayer("quality_cloud", "CLOUD", "cloud", (1,), "clouds"),
    "cloud_shadow": QualityLayer("quality_cloud_shadow", "CLOUDSHADOW", "cloud-shadow", (1,), "cloud shadows"),
    "haze": QualityLayer("quality_haze", "HAZE", "haze", (1,), "haze"),
    "snow": QualityLayer("quality_snow", "SNOW", "snow", (1,), "snow and ice"),
    "cirrus": QualityLayer("quality_cirrus", "CIRRUS", "cirrus", (1, 2, 3), "cirrus, thin to thick"),
    "water": QualityLayer("quality_classes", "CLASSES", "land-water", (2, 3), "water (class 2) and background (class 3)"),
}
#: asset key -> its layer
QUALITY_ASSETS: dict[str, QualityLayer] = {q.asset: q for q in QUALITY_LAYERS.values()}

Preset = Literal["tiny", "demo", "benchmark"]
TrainPreset = Literal["tiny", "demo", "benchmark", "paper"]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")


class WorldConfig(_Config):
    """The synthetic world's size and layout (the physics lives in ``synthetic.fields.SoilPhysics``)."""

    preset: Preset = "tiny"
    seed: int = 7
    scene_px: int = Field(128, ge=32, description="scene side in 30 m pixels (real EnMAP tiles are ~1244 x 1354)")
    n_seen_scenes: int = Field(2, ge=2, description="scenes in the seen region, alternating UTM zones 12 and 13")
    n_unseen_scenes: int = Field(1, ge=1, description="scenes in the held-out region (Great Basin)")
    sites_per_scene: int = Field(60, ge=10)
    n_lab: int = Field(1000, ge=50, description="lab MIR samples in the library")
    lab_near_site_fraction: float = Field(0.35, ge=0, le=1, description="share of lab samples taken within 1.5 km of a satellite site")
    max_cloud_cover: float = Field(0.25, ge=0, le=0.9)
    second_epoch: bool = Field(False, description="also render every scene a year later (same season), with ECe changed in "
                               "known patches (truth/<id>_CHANGE.TIF), for `deepsalt change`")
    seen_bbox: tuple[float, float, float, float] = (-110.0, 37.5, -106.0, 39.5)
    unseen_bbox: tuple[float, float, float, float] = (-113.2, 40.6, -111.8, 41.6)
    covariate_bbox: tuple[float, float, float, float] = (-114.0, 36.5, -105.0, 42.5)

    @classmethod
    def for_preset(cls, preset: Preset, seed: int = 7, **kw) -> "WorldConfig":
        sizes = {
            "tiny": dict(scene_px=128, n_seen_scenes=2, n_unseen_scenes=1, sites_per_scene=60, n_lab=1000),
            "demo": dict(scene_px=256, n_seen_scenes=4, n_unseen_scenes=1, sites_per_scene=150, n_lab=5000),
            "benchmark": dict(scene_px=512, n_seen_scenes=8, n_unseen_scenes=2, sites_per_scene=400, n_lab=20000),
        }[preset]
        return cls(preset=preset, seed=seed, **{**sizes, **kw})


#: lab_labels is a control for distillation: the undistilled student trained on the sites plus the transfer
#: pixels, with each pixel's lab-measured ECe as its label (the data DeepSalt's teacher sees, without a teacher)
VARIANTS = ("deepsalt", "student_no_kd", "student_no_sau", "hsi_only", "ancillary_only", "lab_labels")
BASELINES = ("plsr", "random_forest")
#: controls that know only where a site is: the nearest training site's label, and ordinary kriging (a GP on
#: location); a model that does not beat them on a test is interpolating, not mapping
LOCATION_BASELINES = ("nn_label", "kriging")


class AutoEncoderConfig(_Config):
    """The two sparse auto-encoders (FTIR and EnMAP), pre-trained by reconstruction before the SAU."""

    hidden: tuple[int, ...] = Field((1024, 512, 256), description="hidden layer widths of each encoder (the decoder mirrors them)")
    epochs: int = Field(50, ge=1, description="pre-training epochs")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate")
    wd: float = Field(1e-5, ge=0, description="Adam weight decay")
    batch: int = Field(32, ge=2, description="samples per batch (lab and satellite each)")
    kl_rho: float = Field(0.05, gt=0, lt=1, description="target mean activation of the sigmoid code (KL sparsity)")
    kl_weight: float = Field(0.1, ge=0, description="weight of the KL sparsity term")
    aux_weight: float = Field(1.0, ge=0, description="weight of the auto-encoders' linear ln-ECe read-out from the code "
                              "(labelled training samples only); 0 gives the authors' purely unsupervised encoders, whose "
                              "code on the demo world left the teacher at lab R2 -0.04 (0.88 with 1.0)")


class SAUConfig(_Config):
    """The Spectral Adaptation Unit: both encoders trained on, with lab/site pairs pulled together."""

    epochs: int = Field(50, ge=1, description="alignment epochs")
    recon_weight: float = Field(1.0, ge=0, description="weight of the reconstruction (and sparsity, read-out) terms")
    align_weight: float = Field(48.0, ge=0, description="weight of the alignment term on paired latents")
    align_loss: Literal["cosine", "infonce"] = Field("cosine", description="alignment loss: 1 - cosine, or InfoNCE")
    align_temperature: float = Field(0.07, gt=0, description="InfoNCE temperature")
    pair_max_km: float = Field(1.0, gt=0, description="largest distance of a lab sample and a site paired for alignment "
                               "(mutual nearest neighbours)")


class TransformerConfig(_Config):
    """A transformer stage: the teacher (on aligned FTIR latents) or the students (DeepSalt and its ablations, on
    EnMAP latents and covariates). The defaults are the students'; ``TEACHER`` holds the teacher's."""

    layers: int = Field(4, ge=1, description="transformer encoder layers (a student's: one entry each in kd.layer_map)")
    heads: int = Field(8, ge=1, description="attention heads")
    ff: int = Field(256, ge=1, description="feed-forward width")
    epochs: int = Field(200, ge=1, description="most epochs (early stopping on the validation blocks)")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    wd: float = Field(1e-5, ge=0, description="Adam weight decay")
    batch: int = Field(32, ge=2, description="samples per batch (teacher: lab samples; students: sites and transfer pixels)")
    linear_skip: bool = Field(True, description="add a linear term from the standardised inputs to the output head's "
                              "logit (a wide-and-deep model): where the inputs leave the training range the prediction "
                              "follows a log-linear trend instead of the layer-normalised features' bounded response. On "
                              "the development world (benchmark preset, seed 7, training seed 0) it lowered the validation "
                              "MAE of 4 of the 6 students (DeepSalt 1.102 to 1.071 dS/m)")
    spectral_path: int = Field(32, ge=0, description="leading principal components of the scaled EnMAP spectrum (fitted "
                               "on the training sites and transfer pixels) that the linear term reads beside the inputs; the "
                               "transformer body and the dissimilarity index do not. The auto-encoder's code keeps less of "
                               "the within-scene salinity contrast than the spectrum: on the demo world (seed 7, tiny "
                               "training, seed 0) a ridge fitted to the sites ranked each seen scene's pixels above 4 dS/m at "
                               "a median AUC of 0.78 from the code and the covariates, 0.83 with 32 components added. "
                               "0: none; needs linear_skip")


TEACHER = TransformerConfig(layers=3, heads=4, ff=128, epochs=100, wd=0.0, batch=64, linear_skip=False, spectral_path=0)


class DistillationConfig(_Config):
    """How the teacher teaches the student."""

    alpha: float = Field(
        1.0, ge=0, description="weight of the task term in the distillation loss (the authors': 0.07). With 0.07 the feature "
        "term outweighed the field labels and the distilled student lost to the undistilled one on the benchmark world "
        "(seed 0, with the transfer set: MAE 1.243 against 1.161); with 1.0 it won (1.171 against 1.232)")
    beta: float = Field(0.90, ge=0, description="weight of the feature (layer) term")
    gamma: float = Field(0.10, ge=0, description="weight of the response term (Gaussian KL in log space)")
    layer_map: tuple[int, ...] = Field((0, 1, 2, 2), description="teacher layer each student layer learns from")
    layer_weights: tuple[float, ...] = Field((1.35, 1.05, 0.65, 0.65), description="weight of each student layer's feature term")
    sigma: float = Field(0.25, gt=0, description="sd of the Gaussians in log ECe compared by the response term")
    targets: Literal["aligned_enmap", "paired_lab", "none"] = Field(
        "paired_lab", description="what the teacher reads to make a site's distillation targets: the site's aligned "
        "EnMAP latent (the authors'), or the FTIR latent of the lab sample paired with it (sites without a pair: task term "
        "only), or none (every site: task term only; distillation then runs on the transfer set alone). paired_lab: on "
        "the demo world the teacher read aligned EnMAP latents at MAE 3.4 dS/m, and distilling from them raised the "
        "student's MAE from 1.51 to 2.74; from paired lab latents it stayed at 1.54")
    transfer: bool = Field(
        True, description="distil also on a transfer set: the EnMAP pixel (and covariates) at each training-block lab "
        "sample's own location, with the teacher reading that sample's FTIR spectrum (feature and response terms only). "
        "The lab library is larger than the field survey and sits on its pixels, so the teacher labels data the student "
        "would not otherwise see; needs the world's stac/ items")


class TrainConfig(_Config):
    """Every hyper-parameter of a training run: run-wide settings here, each stage's in its section
    (``ae``, ``sau``, ``teacher``, ``student``, ``kd``). Defaults: DESIGN.md / the authors' refactor."""

    preset: TrainPreset = Field("demo", description="the preset these values started from")
    seeds: tuple[int, ...] = Field((0, 1, 2), description="one full training per seed; metrics are means over seeds")
    workers: int = Field(1, ge=1, description="Ray Train workers (DDP)")
    max_failures: int = Field(3, ge=0, description="lost workers or nodes (e.g. spot preemptions) a seed's training "
                              "survives: Ray Train restarts the worker group from the last checkpoint; the result is the "
                              "same as an uninterrupted run's (data order and dropout are seeded per epoch)")
    gpu: bool = Field(False, description="one GPU per worker")
    # data
    exclude_bands: tuple[str, ...] = Field(tuple(str(b) for b in EXCLUDED_BANDS), description="EnMAP bands (names, i.e. "
                                           "numbers 1-224) the model does not read: the method's 130-135 (1331-1390 nm), "
                                           "plus any band your products fill with nodata (their bad bands)")
    mir_grid: tuple[float, float, int] | None = Field(None, description="model MIR grid: first, last wavenumber "
                                               "(cm-1) and channels; lab tables are resampled onto it; None: the lab "
                                               "table's own grid (OSSL's 600-4000 cm-1, 1701 channels, for an OSSL import)")
    split_block_km: float = Field(0.0, ge=0, description="side (km) of the square spatial blocks assigned whole to "
                                  "train/val/test, sites and lab samples alike; 0: the range of the empirical variogram of "
                                  "ln ECe over the seen sites, halved until at least 10 blocks hold sites")
    split_fractions: tuple[float, float, float] = Field((0.8, 0.1, 0.1), description="share of seen sites in train, "
                                                        "validation and test blocks")
    zero_ec_dsm: float = Field(0.1, ge=0, description="ECe (dS/m) below which a training sample counts as salt-free")
    zero_ec_keep: float = Field(0.1, ge=0, le=1, description="share of salt-free training samples kept (seeded)")
    target: str | dict = Field("ece", description="the soil property learnt: a built-in name (ece, soc) or a [target] table "
                               "(name, column, units, valid_range, log, thresholds, class_names; deepsalt.targets): its "
                               "column, units, output range, classes and whether it is learnt in log space")
    out_range: tuple[float, float] = Field(None, description="range of the bounded output head, in the target's units "
                                           "(default: the target's valid range; ECe 0.05-77 dS/m)")
    adapt_pixels: int = Field(2000, ge=0, description="unlabelled EnMAP pixels read at random points of the held-out "
                              "region's scenes to adapt the student to it (deepsalt_adapted in metrics.json); 0: off")
    # shared by the stages
    latent: int = Field(64, ge=2, description="width of the shared FTIR/EnMAP latent space")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout of teacher and students (and MC dropout in mapping)")
    tokens: Literal["one", "per_dim"] = Field("one", description="transformer tokenisation: the whole input as one token, "
                                              "or one token per input dimension")
    grad_clip: float = Field(1.0, gt=0, description="gradient norm clip, every stage")
    plateau_factor: float = Field(0.1, gt=0, lt=1, description="learning-rate factor when validation stops improving")
    plateau_patience: int = Field(5, ge=1, description="epochs without improvement before the learning rate drops")
    early_stop: int = Field(10, ge=1, description="epochs without improvement before a stage stops")
    mc_samples: int = Field(5, ge=2, le=100, description="MC-dropout passes the 90 % interval is calibrated with; "
                            "map with the same --mc-samples (the bundle records it)")
    variants: tuple[str, ...] = Field(VARIANTS, description="students to train (deepsalt and the ablations)")
    checkpoint_every: int = Field(5, ge=1, description="epochs between checkpoints within a stage (and at each stage end)")
    # the stages
    ae: AutoEncoderConfig = AutoEncoderConfig()
    sau: SAUConfig = SAUConfig()
    teacher: TransformerConfig = TEACHER
    student: TransformerConfig = TransformerConfig()
    kd: DistillationConfig = DistillationConfig()

    @model_validator(mode="before")
    @classmethod
    def _target_range(cls, data):
        """The output range follows the target unless set."""
        if isinstance(data, dict) and data.get("out_range") is None:
            from deepsalt.targets import get_target

            data = {**data, "out_range": get_target(data.get("target", "ece")).valid_range}
        return data

    @field_validator("target")
    @classmethod
    def _known_target(cls, v):
        from deepsalt.targets import get_target

        t = get_target(v)  # a ValueError names the known ones, or the table's fault
        return v if isinstance(v, str) else t.to_dict()  # a table: stored complete, as bundles and cubes record it

    @field_validator("exclude_bands", mode="before")
    @classmethod
    def _band_names(cls, v):
        names = tuple(str(b).strip() for b in (v.split(",") if isinstance(v, str) else v) if str(b).strip())
        bad = [n for n in names if not (n.isdigit() and 1 <= int(n) <= 224)]
        if bad:
            raise ValueError(f"band(s) {', '.join(bad)} are not EnMAP band numbers 1-224 (e.g. 130,131,132)")
        return tuple(sorted(set(names), key=int))

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher_defaults(cls, v):
        """A partial teacher section starts from the teacher's defaults, not the students'."""
        return {**TEACHER.model_dump(), **v} if isinstance(v, dict) else v

    @classmethod
    def for_preset(cls, preset: TrainPreset, **overrides) -> "TrainConfig":
        """A preset's values with ``overrides``: run-wide fields by name, a section as a dict of its fields
        (``ae={"epochs": 3}``), merged into the preset's section."""
        sizes = {
            "tiny": dict(ae=dict(hidden=(256, 128), epochs=8, lr=1e-3), sau=dict(epochs=8), teacher=dict(epochs=25),
                         student=dict(epochs=40), checkpoint_every=10),
            "demo": dict(ae=dict(hidden=(512, 256), epochs=20, lr=5e-4), sau=dict(epochs=20), teacher=dict(epochs=60),
                         student=dict(epochs=120)),
            "paper": dict(),  # DESIGN's sizes (the class defaults): for GPU clusters
            # sized so that 3 seeds train in <= 45 min on 2 CPU cores
            "benchmark": dict(ae=dict(hidden=(512, 256), epochs=12, lr=1e-3, batch=128), sau=dict(epochs=12),
                              teacher=dict(epochs=40, batch=128), student=dict(epochs=100, batch=64)),
        }[preset]
        merged = {**sizes}
        for k, v in overrides.items():
            merged[k] = {**sizes.get(k, {}), **v} if isinstance(v, dict) else v
        return cls(preset=preset, **merged)


def spectral_path(cfg: TrainConfig) -> int:
    """Principal components of the EnMAP spectrum the students' linear term reads (0: none, or no linear term)."""
    return cfg.student.spectral_path if cfg.student.linear_skip else 0


class MapConfig(_Config):
    """One mapping run: which scenes, which model, where the cube goes."""

    stac: str
    collection: str = "ENMAP_HSI_L2A"
    bbox: tuple[float, float, float, float] | None = None
    datetime: str | None = None
    epoch: str = Field(..., description="map epoch on the cube's time axis: YYYY, YYYY-MM or YYYY-MM-DD, year 1950-2200 "
                       "(the epoch's start is its time coordinate)")
    max_cloud: float | None = Field(None, ge=0, le=100, description="max eo:cloud_cover in %")
    covariates: str
    model: str
    out: str
    grid: str = "conus"
    chunk: int = Field(256, ge=16)
    shard: int = Field(2, ge=1, le=16, description="tiles per shard side (Zarr v3 sharding): one stored object holds "
                       "shard x shard chunks of each variable; 1: unsharded. A cube keeps the layout it was made with")
    mc_samples: int = Field(5, ge=0, description="MC-dropout passes for ece_sd (0: no uncertainty)")
    quality_masks: tuple[str, ...] = Field(tuple(QUALITY_ASSETS), description="quality assets whose flagged pixels are not "
                                           "mapped (keys of config.QUALITY_ASSETS)")
    inference: Literal["auto", "tasks", "actors"] = Field("auto", description="where the student runs. 'tasks': in the "
                                                           "read tasks, on CPU (Ray Data fuses the two stages: no actor to start, a shard's pixels "
                                                           "never cross the object store; the bundle is loaded once per worker process); 'actors': in an "
                                                           "autoscaling actor pool (predict_actors, min_actors; one GPU each with gpu); 'auto': actors "
                                                           "with gpu or predict_actors, tasks otherwise")
    predict_actors: int | None = Field(None, ge=1, description="most inference actors (the pool autoscales up to this "
                                       "many); None: one per CPU of the cluster, or with gpu one per GPU (at least 1)")
    min_actors: int = Field(1, ge=1, description="inference actors kept up from the start")
    gpu: bool = Field(False, description="each inference actor reserves one GPU; the cluster's GPU workers scale up "
                      "for them (decided by this request, not by what is running when the job starts)")
    predict_batch: int = Field(16384, ge=256, description="pixels per model call in an inference actor (bench/infer.py "
                               "measures the rate per batch size on a card; with MC passes the call holds batch x passes rows). MC dropout "
                               "is seeded per tile and batch: the same batch size and device give the same ece_sd")
    tiles_per_read_task: int = Field(4, ge=1, le=64, description="tiles one read task prepares in turn: spreads Ray's "
                                     "fixed cost per task (~0.1 s) over more pixels; a task's output grows by a tile each")
    reserve_stage_resources: bool = Field(False, description="Ray Data's per-stage resource reservation "
                                          "(DataContext.op_resource_reservation_enabled, on in Ray by default). Off: on a "
                                          "2-core VM it ran the read tasks one at a time (bench/README.md, mapping on CPU); "
                                          "turn it on if a large run's reads outpace inference and fill the object store")
    read_memory_mb: int = Field(512, ge=64, description="memory a read task reserves: one scene window at a time "
                                "(~30 MB of int16 DN per 256 px tile), GDAL's 64 MB block cache and its tiles' outputs "
                                "(~30 MB each)")
    storage_options: dict = Field(default_factory=dict)
    allow_http: bool = Field(False, description="accept plain http:// asset hrefs (trusted internal servers only)")
    commit_attempts: int = Field(3, ge=1, description="times a run re-plans on the new cube state when another run "
                                 "committed conflicting changes first")

    @model_validator(mode="after")
    def _inference_where(self):
        if self.inference == "tasks" and (self.gpu or self.predict_actors):
            what = "--gpu" if self.gpu else "--actors"
            raise ValueError(f"--inference tasks runs the student in the CPU read tasks, without the actor pool that {what} "
                             "asks for: use --inference actors (or auto)")
        return self

    @property
    def inference_mode(self) -> str:
        """'tasks' or 'actors': where this run's student runs (``inference`` with 'auto' resolved)."""
        if self.inference != "auto":
            return self.inference
        return "actors" if self.gpu or self.predict_actors else "tasks"

    @field_validator("quality_masks")
    @classmethod
    def _known_masks(cls, v):
        bad = [k for k in v if k not in QUALITY_ASSETS]
        if bad:
            raise ValueError(f"unknown quality asset(s) {', '.join(bad)} (known: {', '.join(QUALITY_ASSETS)})")
        return tuple(v)

    @field_validator("datetime")
    @classmethod
    def _datetime_interval(cls, v):
        from deepsalt.data.stac import parse_interval

        parse_interval(v)  # a ValueError names the part at fault
        return v

    @field_validator("epoch")
    @classmethod
    def _epoch_format(cls, v: str) -> str:
        import re
        from datetime import date

        m = re.fullmatch(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?", v.strip())
        try:
            if m is None:
                raise ValueError
            y, mo, d = int(m[1]), int(m[2] or 1), int(m[3] or 1)
            date(y, mo, d)
        except ValueError:
            raise ValueError(f"'{v}' is not YYYY, YYYY-MM or YYYY-MM-DD (e.g. 2024 or 2024-06)") from None
        if not 1950 <= y <= 2200:
            raise ValueError(f"year {y} is outside 1950-2200 (e.g. 2024, not 24)")
        return v.strip()
