"""Training data: lab and satellite tables, spatial split, scalers, SAU pairs. All indices are positional."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from deepsalt.config import TrainConfig
from deepsalt.data.covariates import COVARIATE_NAMES, COVARIATES, sample_covariates
from deepsalt.data.enmap import pixels_at
from deepsalt.data.lab import check_lat_lon, read_lab_table
from deepsalt.data.pairing import mutual_pairs
from deepsalt.data.stac import search_items
from deepsalt.errors import DeepSaltInputError
from deepsalt.models.scalers import Projection, Scaler
from deepsalt.spectra.bands import enmap_bands
from deepsalt.spectra.mir import mir_grid


@dataclass
class TrainingData:
    """Arrays the stages need, scaled with scalers fitted on the training split's raw values."""

    lab_x: np.ndarray  # (n_lab, n_mir) scaled
    lab_y: np.ndarray  # (n_lab,)
    lab_split: np.ndarray  # (n_lab,) "train" | "val" | "test" | "unseen"
    sat_x: np.ndarray  # (n_sat, n_bands) scaled
    sat_cov: np.ndarray  # (n_sat, 8) scaled
    sat_y: np.ndarray  # (n_sat,)
    sat_split: np.ndarray  # (n_sat,)
    sat_block: np.ndarray  # (n_sat,) spatial block id of each site (-1: held-out region); CV folds group blocks
    sat_meta: pd.DataFrame  # positional, aligned with sat_* rows
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray]  # (lab_i, sat_j, km)
    # distillation transfer set: training-block lab samples with the EnMAP pixel and covariates at their location
    transfer_lab: np.ndarray  # (n_tr,) lab rows
    transfer_x: np.ndarray  # (n_tr, n_bands) scaled
    transfer_cov: np.ndarray  # (n_tr, 8) scaled
    # unlabelled EnMAP pixels of the held-out region (random points in its scenes), for adaptation
    target_x: np.ndarray  # (n_target, n_bands) scaled
    scalers: dict[str, Scaler]
    band_names: list[str]
    band_centers: list[float]
    wavenumbers: list[float]
    data_hash: str
    info: dict = field(default_factory=dict)

    def idx(self, which: str, split: str) -> np.ndarray:
        return np.flatnonzero((self.lab_split if which == "lab" else self.sat_split) == split)


def _km_xy(lat, lon, lat0: float) -> np.ndarray:
    """km on a local equirectangular plane (fine over a region of a few hundred km)."""
    return np.column_stack([np.radians(np.asarray(lon, float)) * np.cos(np.radians(lat0)),
                            np.radians(np.asarray(lat, float))]) * 6371.0088


def variogram_range_km(xy: np.ndarray, v: np.ndarray, seed: int, max_points: int = 1500, n_bins: int = 15) -> dict:
    """The practical range (km) of an exponential model ``c0 + c1 (1 - exp(-3 h / a))`` fitted by least squares
    to the empirical semivariogram of ``v`` (at most ``max_points`` points, seeded; lags up to half the largest
    distance, ``n_bins`` equal bins)."""
    import warnings

    from scipy.optimize import OptimizeWarning, curve_fit
    from scipy.spatial.distance import pdist

    pick = np.random.default_rng(seed).permutation(len(v))[:max_points]
    d, g = pdist(xy[pick]), 0.5 * pdist(np.asarray(v, float)[pick, None], "sqeuclidean")
    edges = np.linspace(0, d.max() / 2, n_bins + 1)
    b = np.digitize(d, edges) - 1
    ok = [i for i in range(n_bins) if (b == i).sum() >= 30]
    h = np.array([d[b == i].mean() for i in ok])
    gam = np.array([g[b == i].mean() for i in ok])

    def model(hh, c0, c1, a):
        return c0 + c1 * (1 - np.exp(-3 * hh / a))

    try:
        with warnings.catch_warnings():  # parameter covariance not estimable: the fit itself is still used
            warnings.simplefilter("ignore", OptimizeWarning)
            (c0, c1, a), _ = curve_fit(model, h, gam, p0=(gam[0] / 2, gam.max(), h.mean()),
                                       bounds=([0, 0, max(h[0], 1e-3)], [np.inf, np.inf, d.max()]), maxfev=10_000)
    except (RuntimeError, ValueError, IndexError):  # too few lags, or no convergence: a third of the largest lag
        c0, c1, a = float("nan"), float("nan"), float(edges[-1] / 3)
    return {"range_km": float(a), "nugget": float(c0), "partial_sill": float(c1), "n_points": int(len(pick)),
            "lags_km": h.round(3).tolist(), "semivariance": gam.round(4).tolist()}


@dataclass
class Split:
    """Site split into spatial blocks: ``names`` ("train" | "val" | "test") and ``blocks`` (block id) per point,
    the same for the ``also`` points, and how the block size was chosen (``info``)."""

    names: np.ndarray
    blocks: np.ndarray
    other_names: np.ndarray
    other_blocks: np.ndarray
    info: dict


def spatial_split(lat, lon, y, block_km: float, fractions, seed: int, also=None, min_blocks: int = 10, log: bool = True) -> Split:
    """Square blocks of ``block_km`` (0: the variogram range of ``y``, of ln ``y`` with ``log``), assigned whole to
    train/val/test.

    Whole blocks, not samples: test sites then lie about a correlation range from the nearest training site, so
    the test measures mapping, not interpolation between neighbours. The block size is halved until at least
    ``min_blocks`` blocks hold sites (a small world). The grid's origin is offset at random (seeded); blocks are
    shuffled (seeded) and filled into train, val, test in turn to reach the site ``fractions``. ``also=(lat,
    lon)`` of other points (lab samples) put them in the same blocks: a block's points share its split; blocks
    with no site are drawn at random with the same fractions.
    """
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    lat0 = float(np.mean(lat))
    xy = _km_xy(lat, lon, lat0)
    info: dict = {"block_km_requested": float(block_km)}
    if not block_km:
        yy = np.asarray(y, float)
        vg = variogram_range_km(xy, np.log(np.clip(yy, 1e-3, None)) if log else yy, seed)
        info["variogram"] = vg
        block_km = vg["range_km"]
    rng = np.random.default_rng(seed)
    offset = rng.uniform(0, 1, 2)
    other_xy = _km_xy(*also, lat0) if also is not None else np.zeros((0, 2))

    def cells(pts, side):
        ij = np.floor(pts / side + offset).astype(np.int64)
        return ij[:, 0] * 1_000_003 + ij[:, 1]

    while len(np.unique(cells(xy, block_km))) < min(min_blocks, len(lat)) and block_km > 1e-3:
        block_km /= 2
    site_cells, other_cells = cells(xy, block_km), cells(other_xy, block_km)
    uniq = rng.permutation(np.unique(site_cells))
    sizes = np.array([(site_cells == c).sum() for c in uniq])
    cum = np.cumsum(sizes) / len(lat)
    names = np.where(cum <= fractions[0] + 1e-9, "train", np.where(cum <= fractions[0] + fractions[1] + 1e-9, "val", "test"))
    if "val" not in names:  # guarantee a non-empty val and test
        names[-2] = "val"
    if "test" not in names:
        names[-1] = "test"
    name_of = dict(zip(uniq.tolist(), names.tolist()))
    for c in np.unique(other_cells):  # blocks with lab samples but no site: drawn per block (seeded by its id), so
        if c not in name_of:         # a block's name never depends on which other points were passed
            u = np.random.default_rng([seed, abs(int(c)), int(c < 0)]).random()
            name_of[int(c)] = "train" if u < fractions[0] else ("val" if u < fractions[0] + fractions[1] else "test")
    ids = {c: i for i, c in enumerate(name_of)}
    site_names = np.array([name_of[c] for c in site_cells], dtype=str)
    test, train = site_names == "test", site_names == "train"
    if test.any() and train.any():
        from scipy.spatial import cKDTree

        info["test_to_train_km_median"] = float(np.median(cKDTree(xy[train]).query(xy[test])[0]))
    info.update(block_km=float(block_km), n_blocks=int(len(uniq)))
    return Split(site_names, np.array([ids[c] for c in site_cells], np.int64),
                 np.array([name_of[int(c)] for c in other_cells], dtype=str),
                 np.array([ids[int(c)] for c in other_cells], np.int64), info)


def undersample_zero_ec(y: np.ndarray, idx: np.ndarray, threshold: float, keep: float, seed: int) -> np.ndarray:
    """Positional indices ``idx`` with samples of ECe < threshold kept at rate ``keep`` (seeded)."""
    rng = np.random.default_rng(seed)
    zero = y[idx] < threshold
    keep_mask = ~zero | (rng.random(len(idx)) < keep)
    return idx[keep_mask]


def _hash(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class TrainInputs:
    """What a training run reads: the lab library, the site table (one row per labelled site: ``refl_<band>``
    reflectances, the 8 covariates, the target column, ``latitude``/``longitude``; optional ``region`` (``seen`` or
    ``unseen``: held out for the unseen test), ``koppen`` and ``texture_class``), and for the distillation transfer
    set and the adaptation pixels the EnMAP catalogue and the covariates. ``deepsalt sites`` writes such a table."""

    lab: str
    sites: str
    stac: str | None = None
    covariates: str | None = None

    @classmethod
    def world(cls, folder: str | Path) -> "TrainInputs":
        """A world folder (``deepsalt world``): its lab library, sites, catalogue and covariates."""
        w = Path(folder)
        return cls(str(w / "lab" / "mir_library.parquet"), str(w / "samples" / "satellite_samples.parquet"),
                   str(w / "stac"), str(w / "covariates"))


def read_table(path: str, what: str) -> pd.DataFrame:
    """A Parquet or CSV table (local or fsspec URL), positional index."""
    try:
        df = pd.read_csv(path) if str(path).lower().endswith((".csv", ".csv.gz")) else pd.read_parquet(path)
    except FileNotFoundError:
        raise DeepSaltInputError(path, f"{what} does not exist", "check the path") from None
    except Exception as e:  # noqa: BLE001 - any parser failure means the file is unusable
        raise DeepSaltInputError(path, f"{what} is not a readable Parquet/CSV table ({type(e).__name__}: {str(e)[:120]})") from None
    return df.reset_index(drop=True)


_LAB_PIXELS: dict = {}


def _need_stac(inputs: TrainInputs, what: str) -> str:
    if not inputs.stac or ("://" not in inputs.stac and not Path(inputs.stac).exists()):
        raise DeepSaltInputError(inputs.stac or "--stac", f"no EnMAP catalogue for {what}",
                                 "pass --stac (a catalogue or STAC API), or train with --no-kd-transfer (kd.transfer=False)")
    return inputs.stac


def lab_pixels(inputs: TrainInputs, lon: np.ndarray, lat: np.ndarray, band_names: list[str], band_centers: list[float]):
    """EnMAP reflectance ``(n, n_bands)`` and covariates ``(n, 8)`` at lab sample locations, NaN where no scene of the
    catalogue has a clear pixel. Cached per inputs and points: every seed reads the same pixels."""
    key = (inputs, _hash(lon, lat), tuple(band_names))
    if key not in _LAB_PIXELS:
        stac = _need_stac(inputs, "the distillation transfer set (EnMAP pixels at the lab samples)")
        refl = pixels_at(search_items(stac), lon, lat, band_names, band_centers)
        _LAB_PIXELS.clear()
        _LAB_PIXELS[key] = refl, sample_covariates(inputs.covariates, lon, lat).astype(np.float32)
    return _LAB_PIXELS[key]


def target_pixels(stac: str, region_sites: pd.DataFrame, n: int, seed: int, band_names, band_centers) -> np.ndarray:
    """Raw reflectance of up to ``n`` clear pixels at random points (seeded) in the scenes that hold the sites of a
    region: unlabelled data of that region (no label is read)."""
    items = [it for it in search_items(stac)
             if ((region_sites["longitude"] >= it.bbox[0]) & (region_sites["longitude"] <= it.bbox[2])
                 & (region_sites["latitude"] >= it.bbox[1]) & (region_sites["latitude"] <= it.bbox[3])).any()]
    if not items:
        return np.zeros((0, len(band_names)), np.float32)
    rng = np.random.default_rng([seed, 17])
    boxes = np.array([it.bbox for it in items])[rng.integers(0, len(items), 2 * n)]
    lon, lat = rng.uniform(boxes[:, 0], boxes[:, 2]), rng.uniform(boxes[:, 1], boxes[:, 3])
    refl = pixels_at(items, lon, lat, band_names, band_centers)
    return refl[np.isfinite(refl).all(1)][:n]


def load_training_data(inputs: TrainInputs | str | Path, cfg: TrainConfig, seed: int = 0) -> TrainingData:
    """The arrays of one training run from its inputs (a ``TrainInputs``, or a world folder), for ``cfg.target``."""
    from deepsalt.data.covariates import check_covariate_ranges
    from deepsalt.targets import get_target

    inputs = inputs if isinstance(inputs, TrainInputs) else TrainInputs.world(inputs)
    target = get_target(cfg.target)
    lab = read_lab_table(inputs.lab, target_grid=mir_grid(*cfg.mir_grid) if cfg.mir_grid else "own", target=target.column)
    sat = read_table(inputs.sites, "site table")
    bands = enmap_bands()
    keep = bands.model_band_mask(cfg.exclude_bands)
    refl_cols = [f"refl_{n}" for n in np.array(bands.names)[keep]]
    missing = [c for c in [*refl_cols, *COVARIATE_NAMES, target.column, "latitude", "longitude"] if c not in sat.columns]
    if missing:
        raise DeepSaltInputError(inputs.sites, f"missing columns: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}",
                                 f"a site table needs refl_<band> for the model's bands, {', '.join(COVARIATE_NAMES)}, "
                                 f"{target.column}, latitude and longitude (`deepsalt sites` writes one)")
    if "region" not in sat.columns:
        sat["region"] = "seen"  # no held-out region: the unseen test is empty
    check_lat_lon(sat["latitude"], sat["longitude"], "satellite samples")
    n_in = len(sat)
    ok = np.isfinite(sat[refl_cols].to_numpy()).all(1) & np.isfinite(sat[list(COVARIATE_NAMES)].to_numpy()).all(1) \
        & np.isfinite(sat[target.column].to_numpy(float))
    sat = sat.loc[ok].reset_index(drop=True)  # reset: positions and labels agree from here on (defect 8)
    check_covariate_ranges(sat[list(COVARIATE_NAMES)].to_numpy().T, inputs.sites)  # the units mapping will check too
    if (sat["region"] == "seen").sum() < 10:
        raise DeepSaltInputError(inputs.sites, f"{int((sat['region'] == 'seen').sum())} usable training sites (of {n_in})",
                                 f"a model needs sites with the model's reflectances, the covariates and {target.column}")

    sat_split = np.full(len(sat), "unseen", dtype=object)
    sat_block = np.full(len(sat), -1, np.int64)
    seen = np.flatnonzero(sat["region"].to_numpy() == "seen")
    lab_meta = lab.meta
    lab_seen_region = lab_meta["region"].to_numpy() == "seen" if "region" in lab_meta else np.ones(len(lab_meta), bool)
    # lab samples are split by the same blocks as the sites: none in a validation or test block trains the teacher
    split = spatial_split(sat["latitude"].to_numpy()[seen], sat["longitude"].to_numpy()[seen], sat[target.column].to_numpy()[seen],
                          cfg.split_block_km, cfg.split_fractions, seed,
                          also=(lab_meta["latitude"].to_numpy()[lab_seen_region], lab_meta["longitude"].to_numpy()[lab_seen_region]),
                          log=target.log)
    sat_split[seen], sat_block[seen] = split.names, split.blocks
    lab_block = split.other_names
    lab_split = np.full(len(lab.meta), "unseen", dtype=object)
    lab_split[lab_seen_region] = lab_block

    sat_raw = sat[refl_cols].to_numpy(np.float32)
    cov_raw = sat[list(COVARIATE_NAMES)].to_numpy(np.float32)
    tr_s, tr_l = sat_split == "train", lab_split == "train"
    scalers = {"ftir": Scaler.fit(lab.spectra[tr_l], "minmax"), "enmap": Scaler.fit(sat_raw[tr_s], "minmax"),
               "covariates": Scaler.fit(cov_raw[tr_s], "standard")}
    # Pairs for alignment: training-block lab samples vs TRAINING sites only, so no test block shapes the encoders.
    li, sj, km = mutual_pairs(lab.meta["latitude"].to_numpy()[tr_l], lab.meta["longitude"].to_numpy()[tr_l],
                              sat["latitude"].to_numpy()[tr_s], sat["longitude"].to_numpy()[tr_s], cfg.sau.pair_max_km)
    pairs = (np.flatnonzero(tr_l)[li], np.flatnonzero(tr_s)[sj], km)
    # Transfer set: seen-region lab samples in TRAINING blocks of the site split (so none sits in a val/test
    # block), with a clear EnMAP pixel and covariates at their own location.
    tr_lab = np.zeros(0, np.int64)
    tr_refl, tr_cov = np.zeros((0, len(refl_cols)), np.float32), np.zeros((0, len(COVARIATE_NAMES)), np.float32)
    refl_all = tr_refl
    if cfg.kd.transfer:
        cand = np.flatnonzero(lab_seen_region)[lab_block == "train"]
        refl_all, cov_all = lab_pixels(inputs, lab_meta["longitude"].to_numpy(), lab_meta["latitude"].to_numpy(),
                                       np.array(bands.names)[keep].tolist(), bands.centers_nm[keep].tolist())
        ok = np.isfinite(refl_all[cand]).all(1) & np.isfinite(cov_all[cand]).all(1)
        tr_lab = cand[ok]
        tr_refl, tr_cov = refl_all[tr_lab], cov_all[tr_lab]
    from deepsalt.config import spectral_path

    if k := spectral_path(cfg):  # the students' spectral path: components of the training sites' and transfer pixels'
        rows = np.concatenate([scalers["enmap"].transform(sat_raw[tr_s]), scalers["enmap"].transform(tr_refl)])
        if len(rows) <= k:
            raise DeepSaltInputError(inputs.sites, f"{len(rows)} training spectra for {k} principal components of the "
                                     "students' spectral path", "add sites, or set student.spectral_path below that "
                                     "(0 turns it off)")
        scalers["enmap_pcs"] = Projection.fit(rows, k)
    target_x = np.zeros((0, len(refl_cols)), np.float32)
    if cfg.adapt_pixels and inputs.stac and (sat_split == "unseen").any():
        target_x = target_pixels(_need_stac(inputs, "the adaptation pixels"), sat.loc[sat_split == "unseen"], cfg.adapt_pixels, seed,
                                 np.array(bands.names)[keep].tolist(), bands.centers_nm[keep].tolist())
    return TrainingData(
        lab_x=scalers["ftir"].transform(lab.spectra), lab_y=lab.meta[target.column].to_numpy(np.float32),
        lab_split=lab_split.astype(str), sat_x=scalers["enmap"].transform(sat_raw),
        sat_cov=scalers["covariates"].transform(cov_raw), sat_y=sat[target.column].to_numpy(np.float32),
        sat_split=sat_split.astype(str), sat_block=sat_block, sat_meta=sat.drop(columns=[c for c in sat.columns if c.startswith("refl_")]),
        pairs=pairs, transfer_lab=tr_lab, transfer_x=scalers["enmap"].transform(tr_refl),
        transfer_cov=scalers["covariates"].transform(tr_cov), target_x=scalers["enmap"].transform(target_x), scalers=scalers, band_names=list(np.array(bands.names)[keep]),
        band_centers=bands.centers_nm[keep].tolist(), wavenumbers=lab.wavenumbers.tolist(),
        data_hash=_hash(lab.spectra, lab.meta[target.column].to_numpy(), sat_raw, cov_raw, sat[target.column].to_numpy(), refl_all),
        info={"n_lab": len(lab.meta), "n_sat": len(sat), "n_sat_dropped": n_in - len(sat), "n_pairs": int(len(li)), "n_transfer": int(len(tr_lab)), "n_target": int(len(target_x)), "split": split.info,
              "covariate_units": {c.name: c.units for c in COVARIATES}},
    )
