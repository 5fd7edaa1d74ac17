"""`deepsalt lab import --opus DIR --chem TABLE`: bench FTIR spectra as Bruker's OPUS software writes them become a
DeepSalt lab table.

Bruker's OPUS binary files (``<sample>.0``, ``<sample>.1``, ...: one file per scan, the number counting replicates;
the format of most bench FTIRs and OSSL's MIR source) are read by ``brukeropus``: the absorbance block (``AB``,
``a``), its wavenumbers from the file's own parameters. Replicate scans of a sample are averaged on the first scan's
grid. The chemistry table (CSV or Parquet) joins on ``id_column``; each ``--column TARGET=COLUMN[:UNITS]`` names a
measured property and the units it is in (``soc`` from g/kg, ``ece_dsm`` from mS/m or uS/cm are converted), and the
values are checked against the target's plausible range. Coordinates are optional (``--lat-column``/``--lon-column``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from deepsalt.errors import DeepSaltInputError

#: a Bruker OPUS file name: the sample, then the scan number
OPUS_NAME = re.compile(r"^(?P<sample>.+)\.(?P<scan>\d+)$")
#: (target column, units) -> factor to the target's units
UNIT_FACTORS = {("soc", "%"): 1.0, ("soc", "g/kg"): 0.1, ("soc", "mg/g"): 0.1,
                ("ece_dsm", "dS/m"): 1.0, ("ece_dsm", "mS/cm"): 1.0, ("ece_dsm", "mS/m"): 0.01, ("ece_dsm", "uS/cm"): 0.001}


def read_opus_folder(folder: str | Path) -> tuple[list[str], np.ndarray, np.ndarray, list[int]]:
    """``(sample ids, wavenumbers ascending, spectra (n, channels) averaged over replicates, replicates per sample)``
    of every OPUS file under ``folder``; a file that is not OPUS or has no absorbance block is one line naming it."""
    from brukeropus import read_opus

    folder = Path(folder)
    if not folder.is_dir():
        raise DeepSaltInputError(folder, "is not a folder", "pass the folder holding the OPUS files (<sample>.0, .1, ...)")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and OPUS_NAME.match(p.name))
    if not files:
        raise DeepSaltInputError(folder, "holds no OPUS file (<sample>.<scan number>)", "pass the folder of the instrument's files")
    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for p in files:
        try:
            f = read_opus(str(p))
        except Exception as e:  # noqa: BLE001 - brukeropus raises various errors on files that are not OPUS
            raise DeepSaltInputError(p, f"not a readable OPUS file ({type(e).__name__}: {str(e)[:100]})",
                                     "export the spectra again from OPUS") from None
        keys = list(getattr(f, "data_keys", []))
        if "a" not in keys:
            raise DeepSaltInputError(p, f"has no absorbance block (blocks: {', '.join(keys) or 'none'})",
                                     "save the absorbance spectrum (AB) in the file")
        x, y = np.asarray(f.a.x, float), np.asarray(f.a.y, float)
        order = np.argsort(x)
        groups.setdefault(OPUS_NAME.match(p.name)["sample"], []).append((x[order], y[order]))
    ids = sorted(groups)
    grid = groups[ids[0]][0][0]
    spectra, reps = [], []
    for sid in ids:
        scans = [np.interp(grid, x, y, left=np.nan, right=np.nan) for x, y in groups[sid]]
        s = np.mean(scans, axis=0)
        if not np.isfinite(s).all():
            raise DeepSaltInputError(folder / sid, f"its scans cover {groups[sid][0][0][0]:.0f}-{groups[sid][0][0][-1]:.0f} cm-1, "
                                     f"not the {grid[0]:.0f}-{grid[-1]:.0f} cm-1 of {ids[0]}", "import one instrument's files at a time")
        spectra.append(s)
        reps.append(len(scans))
    return ids, grid, np.asarray(spectra, np.float32), reps


def parse_columns(specs: list[str]) -> dict[str, tuple[str, str | None]]:
    """``["soc=C:g/kg", ...]`` -> ``{"soc": ("C", "g/kg")}``; the targets and units are checked."""
    from deepsalt.targets import TARGETS

    out = {}
    known = {t.column: t for t in TARGETS.values()}
    for spec in specs:
        target, sep, rest = spec.partition("=")
        column, _, units = rest.partition(":")
        if not sep or not column:
            raise DeepSaltInputError(f"--column {spec}", "is not TARGET=COLUMN[:UNITS]", "e.g. --column soc=C:g/kg")
        target = {"ece": "ece_dsm"}.get(target, target)
        if target not in known:
            raise DeepSaltInputError(f"--column {spec}", f"unknown target {target!r}", f"name one of {', '.join(known)}")
        if units and (target, units) not in UNIT_FACTORS:
            have = ", ".join(u for t, u in UNIT_FACTORS if t == target)
            raise DeepSaltInputError(f"--column {spec}", f"cannot convert {target} from {units!r}", f"units DeepSalt converts: {have}")
        out[target] = (column, units or None)
    return out


def import_opus(folder: str | Path, chem: str | Path, id_column: str, out: str | Path, columns: list[str],
                lat_column: str | None = None, lon_column: str | None = None, log=print) -> dict:
    """Write a lab table from OPUS files and a chemistry table; returns a summary that counts the spectra without
    chemistry and the chemistry rows without spectra."""
    from deepsalt.data.lab import write_lab_table
    from deepsalt.targets import TARGETS

    cols = parse_columns(columns)
    if not cols:
        raise DeepSaltInputError("--column", "no target named", "e.g. --column soc=C:g/kg")
    ids, wn, spectra, reps = read_opus_folder(folder)
    try:
        table = pd.read_parquet(chem) if str(chem).lower().endswith((".parquet", ".pq")) else pd.read_csv(chem, dtype={id_column: str})
    except (OSError, ValueError) as e:
        raise DeepSaltInputError(chem, f"not a readable CSV or Parquet table ({type(e).__name__}: {str(e)[:100]})") from None
    need = [id_column, *(c for c, _ in cols.values()), *(c for c in (lat_column, lon_column) if c)]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise DeepSaltInputError(chem, f"has no column {', '.join(missing)} (columns: {', '.join(map(str, table.columns[:10]))})",
                                 "name the chemistry table's columns with --id-column, --column and --lat-column/--lon-column")
    table = table.assign(**{id_column: table[id_column].astype(str).str.strip()})
    dup = table[id_column].duplicated()
    if dup.any():
        raise DeepSaltInputError(chem, f"{int(dup.sum())} duplicated {id_column} (e.g. {table[id_column][dup].iloc[0]!r})",
                                 "one row per sample")
    chem_by_id = table.set_index(id_column)
    have = [i for i in ids if i in chem_by_id.index]
    if not have:
        raise DeepSaltInputError(chem, f"no {id_column} matches a spectrum's sample name (spectra: {', '.join(ids[:3])}; "
                                 f"table: {', '.join(chem_by_id.index[:3])})", "the id column must hold the OPUS files' names without the scan number")
    keep = np.array([i in chem_by_id.index for i in ids])
    meta = pd.DataFrame({"sample_id": have})
    rows = chem_by_id.loc[have]
    meta["latitude"] = pd.to_numeric(rows[lat_column], errors="coerce").to_numpy() if lat_column else np.nan
    meta["longitude"] = pd.to_numeric(rows[lon_column], errors="coerce").to_numpy() if lon_column else np.nan
    meta["depth_top_cm"], meta["depth_bottom_cm"] = np.nan, np.nan
    known = {t.column: t for t in TARGETS.values()}
    for target, (column, units) in cols.items():
        v = pd.to_numeric(rows[column], errors="coerce").to_numpy(float) * UNIT_FACTORS.get((target, units or ""), 1.0)
        known[target].check_plausible(v, f"{chem} ({column}{' in ' + units if units else ''})", ids=np.array(have, object))
        meta[target] = v
        meta[f"{target}_source"] = f"{column}" + (f" ({units} -> {known[target].units})" if units else "")
    meta["n_replicates"] = np.array(reps)[keep]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_lab_table(out, meta, wn, spectra[keep])
    summary = {"out": str(out), "samples": len(have), "spectra_files": int(sum(reps)), "channels": int(len(wn)),
               "wavenumbers_cm1": [float(wn[0]), float(wn[-1])], "replicates": {"min": int(min(reps)), "max": int(max(reps))},
               "spectra_without_chemistry": int((~keep).sum()), "chemistry_without_spectra": int(len(chem_by_id) - len(have)),
               "targets": {t: c for t, (c, _) in cols.items()}}
    log(f"lab import: {len(have)} samples ({summary['spectra_files']} OPUS files, {summary['replicates']['min']}-"
        f"{summary['replicates']['max']} replicates, {wn[0]:.0f}-{wn[-1]:.0f} cm-1, {len(wn)} channels); "
        f"{summary['spectra_without_chemistry']} spectra without chemistry, {summary['chemistry_without_spectra']} "
        "chemistry rows without spectra")
    return summary
