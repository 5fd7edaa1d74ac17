"""`deepsalt lab import`: an Open Soil Spectral Library (OSSL v1.2) download becomes a DeepSalt lab table.

OSSL ships its tables as CSV (``.csv.gz``; also as ``.qs``/``.rds`` for R, not read here), either separate (site
``ossl_soilsite_L0_v1.2``, soil lab ``ossl_soillab_L1_v1.2``, MIR ``ossl_mir_L0_v1.2``) joined by
``id.layer_uuid_txt``, or already joined (``ossl_all_L0_v1.2``). Column names are OSSL's (the OSSL manual's
variable list): ``latitude.point_wgs84_dd``, ``longitude.point_wgs84_dd``, ``layer.upper.depth_usda_cm``,
``layer.lower.depth_usda_cm``, ``id.dataset.site_ascii_txt`` (the profile), ``ec_usda.a364_ds.m`` (EC of a 1:2
soil:water extract, dS/m: not ECe), ``oc_usda.c729_w.pct`` (organic carbon, %), and the MIR absorbance
``scan_mir.<wavenumber>_abs`` at 600-4000 cm-1 in 2 cm-1 steps.

ECe from an extract's EC is converted by a stated rule (``EC_RULES``), recorded per sample. A profile is a site of one
dataset (``dataset.code_ascii_txt``, ``id.dataset.site_ascii_txt``): site ids are unique only within their dataset;
a layer without a site id is a profile of its own (its layer uuid). Ids are read as text. Where a download holds a
table at both levels, L1 (OSSL's harmonised values) is read, and the summary names every table read. Samples are chosen by
depth: a profile's layers that overlap the target depth (0-12 cm by default) are averaged, spectra and values alike,
each weighted by its overlap in cm, as a composite sample of that depth would be; layers without a value of a
property do not count towards it, and a profile whose layers cover less than half the depth is left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd

from deepsalt.errors import DeepSaltInputError

#: OSSL v1.2 column names
OSSL = {"layer": "id.layer_uuid_txt", "site": "id.dataset.site_ascii_txt", "dataset": "dataset.code_ascii_txt", "lat": "latitude.point_wgs84_dd",
        "lon": "longitude.point_wgs84_dd", "top": "layer.upper.depth_usda_cm", "bottom": "layer.lower.depth_usda_cm",
        "ec": "ec_usda.a364_ds.m", "soc": "oc_usda.c729_w.pct"}
MIR_COLUMN = "scan_mir.{}_abs"
_MIR = re.compile(r"^scan_mir\.(\d+(?:\.\d+)?)_abs$")


@dataclass(frozen=True)
class ECRule:
    """ECe = slope x EC_extract + intercept (dS/m); where ``low`` (a second published line, slope and intercept) gives
    more, ECe is that line's (the low end, where a negative intercept would otherwise turn low EC into ECe 0); floored
    at 0."""

    slope: float
    intercept: float
    source: str
    low: tuple[float, float] | None = None

    def to_ece(self, ec: np.ndarray) -> np.ndarray:
        ec = np.asarray(ec, float)
        ece = self.slope * ec + self.intercept
        if self.low is not None:
            ece = np.maximum(ece, self.low[0] * ec + self.low[1])
        return np.maximum(ece, 0.0)

    def to_extract(self, ece: np.ndarray) -> np.ndarray:
        """The extract's EC that ``to_ece`` turns into ``ece`` (> 0): its inverse, as the synthetic world writes EC."""
        ece = np.asarray(ece, float)
        ec = (ece - self.intercept) / self.slope
        if self.low is not None:
            ec = np.minimum(ec, (ece - self.low[1]) / self.low[0])
        return np.maximum(ec, 0.0)


#: How an extract's EC becomes ECe. 1:1 and 1:2: Hogg & Henry (1984, Can. J. Soil Sci. 64), medium-textured soils, as
#: tabulated with other published conversions in PLOS ONE 13(6): e0198290 (2018), Table 2. Their medium-texture lines
#: have negative intercepts, so below EC1:2 = 0.153 (EC1:1 = 0.256) dS/m they give ECe 0 (OSSL's own example KSSL value
#: is 0.031): at the low end the same table's line through (or next to) the origin takes over, where it is higher --
#: for 1:2 Hogg & Henry's fine-texture line (2.16 EC1:2 + 0.03; above it from EC1:2 = 2.05 dS/m the medium line rules),
#: for 1:1 the combined-texture line through the origin (2.11 EC1:1, the table's source [63]; the medium line rules from
#: EC1:1 = 0.86 dS/m). The result is continuous and rising, and low EC stays low but above 0.
#: 1:5: the mean factor of 628 samples in a study of the texture dependence of the 1:5 factor (4.6 to 9.9 by sand
#: content; "Conversion factors for electrical conductivity of 1:5 soil-water extracts to saturated paste", reclaimed
#: tidelands, Korea): texture matters, so pass --ec-factor for a local calibration. paste: the EC is ECe already.
EC_RULES = {
    "1:1": ECRule(3.01, -0.77, "Hogg & Henry 1984, 1:1 extract, medium texture: ECe = 3.01 EC1:1 - 0.77; "
                               "at the low end 2.11 EC1:1 (PLOS ONE 13(6) e0198290, Table 2), whichever is higher", (2.11, 0.0)),
    "1:2": ECRule(2.35, -0.36, "Hogg & Henry 1984, 1:2 extract: ECe = 2.35 EC1:2 - 0.36 (medium texture); "
                               "at the low end 2.16 EC1:2 + 0.03 (fine texture), whichever is higher", (2.16, 0.03)),
    "1:5": ECRule(7.5, 0.0, "mean 1:5 factor of 628 samples (range 4.6-9.9 with sand content): ECe = 7.5 EC1:5"),
    "paste": ECRule(1.0, 0.0, "saturated-paste extract: ECe measured"),
}


R_FORMATS = (".qs", ".rds", ".rda", ".rdata")


#: the extract each OSSL dataset's EC (``ec_usda.a364_ds.m``) comes from: OSSL harmonises KSSL's 1:2 and LUCAS's ISO
#: 11265 (1:5) EC into one column, so the rule is chosen per dataset (``dataset.code_ascii_txt``)
DATASET_EC = {"KSSL.SSL": "1:2", "LUCAS.SSL": "1:5", "LUCAS.WOODWELL.SSL": "1:5"}


def parse_ec_methods(spec: str | None) -> tuple[str | None, dict[str, str]]:
    """``"1:2"`` or ``"KSSL.SSL=1:2,LUCAS.SSL=1:5"`` (or both kinds) -> (the method for datasets not named, {dataset:
    method}); each method must be one of ``EC_RULES``."""
    default, per = None, {}
    for part in [p.strip() for p in (spec or "").split(",") if p.strip()]:
        name, sep, method = part.rpartition("=")
        method = method.strip()
        if method not in EC_RULES:
            raise DeepSaltInputError("--ec-method", f"unknown EC method {method!r}", f"declare one of {', '.join(EC_RULES)}")
        if sep:
            per[name.strip()] = method
        else:
            default = method
    return default, per


def _read_csv(fs, path: str, usecols=None) -> pd.DataFrame:
    if path.lower().endswith(R_FORMATS):
        raise DeepSaltInputError(path, "is an R serialisation (.qs/.rds), which only R reads",
                                 "download OSSL's CSV tables (.csv.gz) instead")
    ids = {OSSL["layer"]: str, OSSL["site"]: str, OSSL["dataset"]: str}  # "1001", never 1001.0
    try:
        with fs.open(path, "rb", compression="infer") as f:
            return pd.read_csv(f, low_memory=False, usecols=usecols, dtype=ids)
    except (UnicodeDecodeError, pd.errors.ParserError, EOFError, OSError) as e:
        raise DeepSaltInputError(path, f"not a readable CSV ({type(e).__name__}: {str(e)[:120]})",
                                 "download OSSL's CSV tables (.csv.gz) again") from None


def read_ossl(src: str, read: list | None = None) -> pd.DataFrame:
    """The OSSL tables under ``src`` (a folder or URL holding the separate or the joined CSVs, or one joined CSV),
    joined by ``id.layer_uuid_txt``: one row per layer. ``read`` collects the names of the tables read and the
    layers the join left out (as ``("lost", n)``)."""
    read = [] if read is None else read
    fs, path = fsspec.core.url_to_fs(src)
    if not fs.exists(path):
        raise DeepSaltInputError(src, "does not exist", "pass the folder of an OSSL download or its joined CSV")
    if fs.isdir(path):
        names = {p.rsplit("/", 1)[-1]: p for p in fs.ls(path, detail=False)}

        def find(kind):
            hits = sorted(p for n, p in names.items() if n.startswith(f"ossl_{kind}_") and n.endswith((".csv", ".csv.gz")))
            l1 = [p for p in hits if "_L1_" in p.rsplit("/", 1)[-1]]  # OSSL's harmonised level, where both are there
            return (l1 or hits or [None])[0]

        joined = find("all")
        if joined:
            read.append(joined.rsplit("/", 1)[-1])
            return _read_csv(fs, joined)
        parts = {k: find(k) for k in ("soilsite", "soillab", "mir")}
        missing = [f"ossl_{k}_*.csv.gz" for k, p in parts.items() if p is None]
        if missing:
            rdata = sorted(n for n in names if n.lower().endswith(R_FORMATS))
            raise DeepSaltInputError(src, f"no {', '.join(missing)}" + (f" (only R files: {', '.join(rdata[:3])})" if rdata else ""),
                                     "download OSSL's site, soil lab and MIR tables as CSV (or the joined "
                                     "ossl_all_L1_v1.2.csv.gz) into one folder")
        tables = {k: _read_csv(fs, p) for k, p in parts.items()}
        read += [p.rsplit("/", 1)[-1] for p in parts.values()]
        for k, t in tables.items():
            if OSSL["layer"] not in t:
                raise DeepSaltInputError(parts[k], f"has no {OSSL['layer']} column", "the OSSL tables join on it")
            dup = t[OSSL["layer"]].duplicated() & t[OSSL["layer"]].notna()
            if dup.any():  # a repeated id would multiply its layer in the join: the first row is read, the rest counted
                tables[k] = t.loc[~dup]
                read.append(("duplicate", int(dup.sum())))
        out = tables["soilsite"].merge(tables["soillab"], on=OSSL["layer"], how="inner", suffixes=("", ".lab")) \
                                .merge(tables["mir"], on=OSSL["layer"], how="inner", suffixes=("", ".mir"))
        every = set().union(*(set(t[OSSL["layer"]].dropna()) for t in tables.values()))
        read.append(("lost", len(every) - len(out)))
        return out
    read.append(path.rsplit("/", 1)[-1])
    return _read_csv(fs, path)


def import_ossl(src: str, out: str, ec_method: str | None = None, depth: tuple[float, float] = (0.0, 12.0),
                ec_rule: ECRule | None = None, log=print) -> dict:
    """Write a DeepSalt lab table (Parquet) from an OSSL download; returns a summary with the counts of what was
    left out and why. ``ec_method`` declares the extract each dataset's EC comes from (``parse_ec_methods``: 1:1, 1:2,
    1:5 or paste, for all or per dataset); a dataset not named takes ``DATASET_EC``'s method, else the one given for
    all, else (a download of one dataset) 1:2, OSSL's; a mixed download with a dataset of no known method is refused.
    ``ec_rule`` replaces the built-in rule of the method given for all (a local calibration)."""
    from deepsalt.data.lab import write_lab_table

    default_method, per_dataset = parse_ec_methods(ec_method)
    top_d, bot_d = depth
    if not 0 <= top_d < bot_d:
        raise DeepSaltInputError("--depth", f"{top_d}-{bot_d} cm is not a depth interval", "e.g. --depth 0,12")
    read: list = []
    df = read_ossl(src, read)
    lost = sum(r[1] for r in read if isinstance(r, tuple) and r[0] == "lost")
    duplicates = sum(r[1] for r in read if isinstance(r, tuple) and r[0] == "duplicate")
    tables = [r for r in read if not isinstance(r, tuple)]
    need = [OSSL[k] for k in ("layer", "lat", "lon", "top", "bottom")]
    missing = [c for c in need if c not in df]
    if missing:
        raise DeepSaltInputError(src, f"missing OSSL columns: {', '.join(missing)}", "pass OSSL v1.2 tables as the portal ships them")
    mir_cols = [c for c in df.columns if _MIR.match(str(c))]
    if len(mir_cols) < 200:
        raise DeepSaltInputError(src, f"{len(mir_cols)} MIR columns (scan_mir.<wavenumber>_abs)", "download OSSL's MIR table too")
    wn = np.array([float(_MIR.match(c).group(1)) for c in mir_cols])
    order = np.argsort(wn)
    wn, mir_cols = wn[order], [mir_cols[i] for i in order]
    n_layers = len(df)
    layer = df[OSSL["layer"]].astype("string")
    if OSSL["site"] in df:  # a profile is a site of one dataset; a layer without a site id is a profile of its own
        site = df[OSSL["site"]].astype("string").str.strip().replace("", pd.NA)
        no_site = site.isna()
        site = site.fillna("layer " + layer.fillna("?"))
    else:
        no_site = pd.Series(False, index=df.index)
        site = df[OSSL["lat"]].round(6).astype(str) + "," + df[OSSL["lon"]].round(6).astype(str)
    dataset = df[OSSL["dataset"]].astype("string").fillna("?") if OSSL["dataset"] in df else pd.Series("?", index=df.index)
    several = dataset.nunique() > 1
    profile = (dataset + ":" + site if several else site).astype(str)
    top, bot = df[OSSL["top"]].to_numpy(float), df[OSSL["bottom"]].to_numpy(float)
    has_depth = np.isfinite(top) & np.isfinite(bot)
    overlap = np.where(has_depth, np.clip(np.minimum(bot, bot_d) - np.maximum(top, top_d), 0, None), 0.0)
    spec = df[mir_cols].to_numpy(np.float64)
    has_mir = np.isfinite(spec).all(1)
    has_loc = np.isfinite(df[OSSL["lat"]].to_numpy(float)) & np.isfinite(df[OSSL["lon"]].to_numpy(float))
    values = {}
    methods = pd.Series("", index=df.index, dtype=object)
    rules: dict[str, ECRule] = {}
    if OSSL["ec"] in df:
        ec = pd.to_numeric(df[OSSL["ec"]], errors="coerce").to_numpy(float)
        has_ec = np.isfinite(ec)
        ece = np.full(len(df), np.nan)
        for d in sorted(dataset[has_ec].unique()):
            method = per_dataset.get(d) or DATASET_EC.get(d) or default_method or (None if several else "1:2")
            if method is None:
                raise DeepSaltInputError(src, f"dataset {d} has EC ({OSSL['ec']}) but no known extract method, in a download "
                                         f"of {dataset.nunique()} datasets", f"declare it: --ec-method {d}=1:2 (or 1:1, 1:5, paste)")
            rule = ec_rule if (ec_rule and method == default_method) else EC_RULES[method]
            rows = (dataset == d).to_numpy() & has_ec
            ece[rows] = rule.to_ece(ec[rows])
            methods[rows] = method
            rules[method] = rule
        values["ece_dsm"] = ece
    if OSSL["soc"] in df:
        values["soc"] = pd.to_numeric(df[OSSL["soc"]], errors="coerce").to_numpy(float)
    if not values:
        raise DeepSaltInputError(src, f"neither {OSSL['ec']} nor {OSSL['soc']}", "download OSSL's soil lab table too")
    from deepsalt.targets import TARGETS

    for name, v in values.items():  # units: a value no soil has in dS/m or % is another unit, never a sample
        target = next(t for t in TARGETS.values() if t.column == name)
        target.check_plausible(v, f"{src} ({OSSL['ec'] if name == 'ece_dsm' else OSSL['soc']})", ids=("layer " + layer).to_numpy())
    use = (overlap > 0) & has_mir & has_loc
    counts = {"layers": n_layers, "layers_lost_in_join": int(lost), "layer_rows_repeated": int(duplicates), "layers_without_depth": int((~has_depth).sum()),
              "layers_outside_depth": int((has_depth & (overlap <= 0)).sum()), "layers_without_mir": int((~has_mir).sum()),
              "layers_without_location": int((~has_loc).sum()), "layers_without_site_id": int(no_site.sum())}
    rows = []
    idx = pd.Series(np.flatnonzero(use)).groupby(profile.to_numpy()[use], sort=True)
    for sid, members in idx:
        m = members.to_numpy()
        used = sorted({methods.iloc[i] for i in m if methods.iloc[i]})
        w = overlap[m]
        coverage = float(w.sum() / (bot_d - top_d))
        if coverage < 0.5:
            counts["profiles_under_half_covered"] = counts.get("profiles_under_half_covered", 0) + 1
            continue
        rec = {"sample_id": sid, "dataset": str(dataset.iloc[m[0]]), "ec_method": ",".join(used) or None, "latitude": float(df[OSSL["lat"]].iloc[m[0]]), "longitude": float(df[OSSL["lon"]].iloc[m[0]]),
               "depth_top_cm": top_d, "depth_bottom_cm": bot_d, "depth_coverage": round(coverage, 4), "n_layers": len(m),
               "_spec": (spec[m] * w[:, None]).sum(0) / w.sum()}
        for name, v in values.items():
            ok = np.isfinite(v[m])
            rec[name] = float((v[m][ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else np.nan
        rows.append(rec)
    table = pd.DataFrame(rows)
    if table.empty:
        raise DeepSaltInputError(src, f"no profile has MIR spectra and located layers within {top_d:g}-{bot_d:g} cm",
                                 "check --depth and that the MIR table was downloaded")
    for name in values:  # a property's missing values: counted; rows without any property: dropped
        counts[f"missing_{name}"] = int(table[name].isna().sum())
    keep = table[list(values)].notna().any(axis=1)
    counts["profiles_without_any_target"] = int((~keep).sum())
    table = table.loc[keep].reset_index(drop=True)
    if "ece_dsm" in values:
        table["ec_rule"] = [", ".join(rules[x].source for x in str(m_).split(",")) if m_ else None for m_ in table["ec_method"]]
    else:
        table = table.drop(columns="ec_method")
    spectra = np.stack(table.pop("_spec").to_numpy()).astype(np.float32)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_lab_table(out, table, wn, spectra)
    summary = {"out": str(out), "tables": tables, "samples": len(table), "channels": int(len(wn)),
               "wavenumbers_cm1": [float(wn[0]), float(wn[-1])], "depth_cm": [top_d, bot_d],
               "ec_method": ",".join(sorted(rules)) or None, "ec_rule": "; ".join(r.source for _, r in sorted(rules.items())) or None,
               "ec_method_by_dataset": {d: m_ for d, m_ in sorted(zip(dataset, methods)) if m_}, **counts}
    log(f"lab import: read {', '.join(tables)}")
    log(f"lab import: {len(table)} samples ({summary['wavenumbers_cm1'][0]:.0f}-{summary['wavenumbers_cm1'][1]:.0f} cm-1, "
        f"{len(wn)} channels) from {n_layers} layers; left out: "
        + (", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items() if k not in ("layers", "layers_without_site_id") and v)
           or "none") + (f"; {counts['layers_without_site_id']} layer(s) without a site id, each its own profile"
                         if counts["layers_without_site_id"] else ""))
    return summary
