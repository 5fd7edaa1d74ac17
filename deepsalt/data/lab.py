"""Lab MIR (FTIR) soil-spectra tables: OSSL-style wide tables, read onto the model's wavenumber grid.

A table is Parquet or CSV with one row per sample: ``sample_id``, ``latitude``, ``longitude``,
``depth_top_cm``, ``depth_bottom_cm``, the target column (``ece_dsm`` for ECe, ``soc_pct`` for SOC: see
``deepsalt.targets``) and one absorbance column per channel, named ``scan_mir.<wavenumber>_abs`` (OSSL) or by the
bare wavenumber in cm-1 (e.g. the authors' 1765-channel table). An OSSL download is converted to this table by
``deepsalt lab import`` (``data.ossl``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from deepsalt.errors import DeepSaltInputError
from deepsalt.spectra.mir import mir_grid, resample

META_COLUMNS = ("sample_id", "latitude", "longitude", "depth_top_cm", "depth_bottom_cm")
_OSSL = re.compile(r"^scan_mir\.(\d+(?:\.\d+)?)_abs$")
_BARE = re.compile(r"^\d+(?:\.\d+)?$")
MIN_CHANNELS = 200  # fewer is not a full MIR scan


@dataclass
class LabTable:
    """Lab samples: ``meta`` (n rows of META_COLUMNS, the target column and extras) and ``spectra (n, channels)`` on
    ``wavenumbers``; ``dropped``: rows left out for a missing target value."""

    meta: pd.DataFrame
    wavenumbers: np.ndarray
    spectra: np.ndarray
    dropped: int = 0


def write_lab_table(path: str | Path, meta: pd.DataFrame, wavenumbers: np.ndarray, spectra: np.ndarray) -> None:
    cols = [f"scan_mir.{w:.2f}_abs" for w in wavenumbers]
    table = pa.Table.from_pandas(meta.reset_index(drop=True), preserve_index=False)
    for name, col in zip(cols, spectra.T):
        table = table.append_column(name, pa.array(col.astype(np.float32)))
    pq.write_table(table, path, compression="zstd")


def spectral_columns(columns, where: str) -> tuple[list, list[float]]:
    """The absorbance columns of a lab table (``scan_mir.<wn>_abs``, OSSL's, or the bare wavenumber) and their
    wavenumbers; fewer than ``MIN_CHANNELS`` is not a full MIR scan."""
    cols, wns = [], []
    for c in columns:
        m = _OSSL.match(str(c)) or _BARE.match(str(c))
        if m:
            cols.append(c)
            wns.append(float(m.group(1) if m.groups() else m.group(0)))
    if len(cols) < MIN_CHANNELS:
        raise DeepSaltInputError(where, f"found {len(cols)} spectral channels, need at least {MIN_CHANNELS}",
                                 "name absorbance columns scan_mir.<wavenumber>_abs (cm-1) or by the bare wavenumber")
    return cols, wns


def check_lat_lon(lat, lon, where: str) -> None:
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    bad = ~((np.abs(lat) <= 90) & (np.abs(lon) <= 180))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DeepSaltInputError(where, f"{bad.sum()} rows have latitude/longitude out of range "
                                 f"(first: row {i}, lat={lat[i]}, lon={lon[i]})",
                                 "latitude must be in [-90, 90] and longitude in [-180, 180] decimal degrees")


def read_lab_table(path: str | Path, target_grid: np.ndarray | None = None, storage_options: dict | None = None,
                   target: str = "ece_dsm") -> LabTable:
    """Read a lab table and resample its spectra onto ``target_grid`` (default: the model's 1765-channel grid; "own":
    the table's own grid). Rows
    without a value of the ``target`` column are left out (counted in ``dropped``)."""
    where = str(path)
    try:
        if where.endswith(".csv"):
            df = pd.read_csv(path, storage_options=storage_options)
        else:
            df = pd.read_parquet(path, storage_options=storage_options)
    except FileNotFoundError:
        raise DeepSaltInputError(where, "lab table does not exist", "check the path") from None
    except Exception as e:  # noqa: BLE001 - any parser failure means the file is unusable
        raise DeepSaltInputError(where, f"not a readable Parquet/CSV table ({type(e).__name__}: {e})") from None
    missing = [c for c in (*META_COLUMNS, target) if c not in df.columns]
    if missing:
        hint = " (an OSSL download? convert it with `deepsalt lab import --ossl`)" if any(str(c).startswith("id.layer") for c in df.columns) else ""
        raise DeepSaltInputError(where, f"missing columns: {', '.join(missing)}{hint}", f"a lab table needs {', '.join((*META_COLUMNS, target))}")
    keep = pd.to_numeric(df[target], errors="coerce").notna().to_numpy()
    dropped = int((~keep).sum())
    df = df.loc[keep].reset_index(drop=True)
    spec_cols, wns = spectral_columns(df.columns, where)
    check_lat_lon(df["latitude"], df["longitude"], where)
    wn = np.array(wns)
    spectra = df[spec_cols].to_numpy(np.float32)
    if not np.isfinite(spectra).all():
        bad = int((~np.isfinite(spectra).all(axis=1)).sum())
        raise DeepSaltInputError(where, f"{bad} samples have missing absorbance values", "drop or re-scan them")
    if isinstance(target_grid, str) and target_grid == "own":  # the table's own grid, ascending
        order = np.argsort(wn)
        grid, spectra = wn[order], spectra[:, order]
    else:
        grid = mir_grid() if target_grid is None else np.asarray(target_grid)
        spectra = resample(wn, spectra, grid, where)
    meta = df.drop(columns=spec_cols).reset_index(drop=True)
    return LabTable(meta=meta, wavenumbers=grid, spectra=spectra, dropped=dropped)
