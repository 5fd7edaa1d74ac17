"""Training data: lab and satellite tables, spatial split, scalers, SAU pairs. All indices are positional."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

from deepsalt.config import TrainConfig
from deepsalt.data.covariates import COVARIATE_NAMES, COVARIATES, sample_covariates
from deepsalt.data.enmap import pixels_at
from deepsalt.data.lab import check_lat_lon, read_lab_table
from deepsalt.data.pairing import mutual_pairs
from deepsalt.data.stac import search_items
from deepsalt.errors import DeepSaltInputError
from deepsalt.models.scalers import Scaler
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
    sat_meta: pd.DataFrame  # positional, aligned with sat_* rows
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray]  # (lab_i, sat_j, km)
    # distillation transfer set: training-block lab samples with the EnMAP pixel and covariates at their location
    transfer_lab: np.ndarray  # (n_tr,) lab rows
    transfer_x: np.ndarray  # (n_tr, n_bands) scaled
    transfer_cov: np.ndarray  # (n_tr, 8) scaled
    scalers: dict[str, Scaler]
    band_names: list[str]
    band_centers: list[float]
    wavenumbers: list[float]
    data_hash: str
    info: dict = field(default_factory=dict)

    def idx(self, which: str, split: str) -> np.ndarray:
        return np.flatnonzero((self.lab_split if which == "lab" else self.sat_split) == split)


def spatial_split(lat, lon, n_blocks: int, fractions, seed: int, also=None):
    """KMeans blocks on lat/lon, whole blocks shuffled into train/val/test to reach the fractions.

    Whole blocks, not samples, so that neighbouring (spatially autocorrelated) sites never straddle train
    and test: a random split would leak and flatter every model. ``also=(lat, lon)`` of other points: they
    get the split of the block they fall in, returned second.
    """
    n_blocks = min(n_blocks or max(10, len(lat) // 8), len(lat))
    km = KMeans(n_blocks, n_init=4, random_state=seed).fit(np.column_stack([lat, lon]))
    labels = km.labels_
    order = np.random.default_rng(seed).permutation(n_blocks)
    sizes = np.bincount(labels, minlength=n_blocks)[order]
    cum = np.cumsum(sizes) / len(lat)
    names = np.where(cum <= fractions[0] + 1e-9, "train", np.where(cum <= fractions[0] + fractions[1] + 1e-9, "val", "test"))
    # guarantee a non-empty val and test
    if "val" not in names:
        names[-2] = "val"
    if "test" not in names:
        names[-1] = "test"
    block_name = dict(zip(order, names))
    out = np.array([block_name[b] for b in labels], dtype=str)
    if also is None:
        return out
    other = km.predict(np.column_stack(also)) if len(also[0]) else np.zeros(0, int)
    return out, np.array([block_name[b] for b in other], dtype=str)


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


_LAB_PIXELS: dict = {}


def lab_pixels(world: Path, lon: np.ndarray, lat: np.ndarray, band_names: list[str], band_centers: list[float]):
    """EnMAP reflectance ``(n, n_bands)`` and covariates ``(n, 8)`` at lab sample locations, NaN where no scene of
    ``world/stac`` has a clear pixel. Cached per world and points: every seed reads the same pixels."""
    key = (str(world), _hash(lon, lat), tuple(band_names))
    if key not in _LAB_PIXELS:
        stac = world / "stac"
        if not stac.exists():
            raise DeepSaltInputError(stac, "no STAC items for the distillation transfer set (EnMAP pixels at the lab samples)",
                                     "put the EnMAP items (items.json) in the world's stac/ folder, or train with "
                                     "--no-kd-transfer (kd_transfer=False)")
        refl = pixels_at(search_items(str(stac)), lon, lat, band_names, band_centers)
        _LAB_PIXELS.clear()
        _LAB_PIXELS[key] = refl, sample_covariates(world / "covariates", lon, lat).astype(np.float32)
    return _LAB_PIXELS[key]


def load_training_data(world: str | Path, cfg: TrainConfig, seed: int = 0) -> TrainingData:
    world = Path(world)
    lab = read_lab_table(world / "lab" / "mir_library.parquet", target_grid=mir_grid(*cfg.mir_grid))
    sat = pd.read_parquet(world / "samples" / "satellite_samples.parquet").reset_index(drop=True)
    bands = enmap_bands()
    keep = bands.model_band_mask()
    refl_cols = [f"refl_{n}" for n in np.array(bands.names)[keep]]
    missing = [c for c in [*refl_cols, *COVARIATE_NAMES, "ece_dsm", "latitude", "longitude", "region"] if c not in sat.columns]
    if missing:
        raise DeepSaltInputError(world / "samples" / "satellite_samples.parquet", f"missing columns: {', '.join(missing[:5])}")
    check_lat_lon(sat["latitude"], sat["longitude"], "satellite samples")
    ok = np.isfinite(sat[refl_cols].to_numpy()).all(1) & np.isfinite(sat[list(COVARIATE_NAMES)].to_numpy()).all(1)
    sat = sat.loc[ok].reset_index(drop=True)  # reset: positions and labels agree from here on (defect 8)

    sat_split = np.full(len(sat), "unseen", dtype=object)
    seen = np.flatnonzero(sat["region"].to_numpy() == "seen")
    lab_meta = lab.meta
    lab_seen_region = lab_meta["region"].to_numpy() == "seen" if "region" in lab_meta else np.ones(len(lab_meta), bool)
    sat_split[seen], lab_block = spatial_split(
        sat["latitude"].to_numpy()[seen], sat["longitude"].to_numpy()[seen], cfg.split_blocks, cfg.split_fractions, seed,
        also=(lab_meta["latitude"].to_numpy()[lab_seen_region], lab_meta["longitude"].to_numpy()[lab_seen_region]))
    lab_split = np.full(len(lab.meta), "unseen", dtype=object)
    lab_seen = np.flatnonzero(lab_seen_region)
    perm = np.random.default_rng(seed).permutation(lab_seen)
    n_tr, n_va = int(cfg.split_fractions[0] * len(perm)), int(cfg.split_fractions[1] * len(perm))
    lab_split[perm[:n_tr]], lab_split[perm[n_tr:n_tr + n_va]], lab_split[perm[n_tr + n_va:]] = "train", "val", "test"

    sat_raw = sat[refl_cols].to_numpy(np.float32)
    cov_raw = sat[list(COVARIATE_NAMES)].to_numpy(np.float32)
    tr_s, tr_l = sat_split == "train", lab_split == "train"
    scalers = {"ftir": Scaler.fit(lab.spectra[tr_l], "minmax"), "enmap": Scaler.fit(sat_raw[tr_s], "minmax"),
               "covariates": Scaler.fit(cov_raw[tr_s], "standard")}
    # Pairs for alignment: lab samples vs TRAINING sites only, so test sites never shape the encoders.
    li, sj, km = mutual_pairs(lab.meta["latitude"].to_numpy(), lab.meta["longitude"].to_numpy(),
                              sat["latitude"].to_numpy()[tr_s], sat["longitude"].to_numpy()[tr_s], cfg.pair_max_km)
    pairs = (li, np.flatnonzero(tr_s)[sj], km)
    # Transfer set: seen-region lab samples in TRAINING blocks of the site split (so none sits in a val/test
    # block), with a clear EnMAP pixel and covariates at their own location.
    tr_lab = np.zeros(0, np.int64)
    tr_refl, tr_cov = np.zeros((0, len(refl_cols)), np.float32), np.zeros((0, len(COVARIATE_NAMES)), np.float32)
    refl_all = tr_refl
    if cfg.kd_transfer:
        cand = np.flatnonzero(lab_seen_region)[lab_block == "train"]
        refl_all, cov_all = lab_pixels(world, lab_meta["longitude"].to_numpy(), lab_meta["latitude"].to_numpy(),
                                       np.array(bands.names)[keep].tolist(), bands.centers_nm[keep].tolist())
        ok = np.isfinite(refl_all[cand]).all(1) & np.isfinite(cov_all[cand]).all(1)
        tr_lab = cand[ok]
        tr_refl, tr_cov = refl_all[tr_lab], cov_all[tr_lab]
    return TrainingData(
        lab_x=scalers["ftir"].transform(lab.spectra), lab_y=lab.meta["ece_dsm"].to_numpy(np.float32),
        lab_split=lab_split.astype(str), sat_x=scalers["enmap"].transform(sat_raw),
        sat_cov=scalers["covariates"].transform(cov_raw), sat_y=sat["ece_dsm"].to_numpy(np.float32),
        sat_split=sat_split.astype(str), sat_meta=sat.drop(columns=[c for c in sat.columns if c.startswith("refl_")]),
        pairs=pairs, transfer_lab=tr_lab, transfer_x=scalers["enmap"].transform(tr_refl),
        transfer_cov=scalers["covariates"].transform(tr_cov), scalers=scalers, band_names=list(np.array(bands.names)[keep]),
        band_centers=bands.centers_nm[keep].tolist(), wavenumbers=lab.wavenumbers.tolist(),
        data_hash=_hash(lab.spectra, lab.meta["ece_dsm"].to_numpy(), sat_raw, cov_raw, sat["ece_dsm"].to_numpy(), refl_all),
        info={"n_lab": len(lab.meta), "n_sat": len(sat), "n_pairs": int(len(li)), "n_transfer": int(len(tr_lab)),
              "covariate_units": {c.name: c.units for c in COVARIATES}},
    )
