"""The synthetic world's inputs as users have them, in ``WORLD/native/``: what `deepsalt sites`, `deepsalt lab import`
and `deepsalt covariates build` read, so that the demo and CI train from the same files a real user would.

- ``sites.csv``: field sites with a sampling date (``lon``, ``lat``, ``date``, ``ece_dsm``, ``soc``, ``region``,
  ``site_id``), a few days from the scene they were sampled beside.
- ``ossl/``: the lab library in OSSL v1.2's layout, as its portal ships it: ``ossl_soilsite_L0_v1.2.csv.gz``,
  ``ossl_soillab_L0_v1.2.csv.gz`` and ``..._L1_...`` and ``ossl_mir_L0_v1.2.csv.gz``, joined by ``id.layer_uuid_txt``;
  MIR at 600-4000 cm-1 in 2 cm-1 steps; mixed as real downloads are (``_ossl``): KSSL samples with EC of the 1:2
  extract and a deeper layer that depth selection must leave out, LUCAS samples with EC of the 1:5 extract, site ids
  colliding across the two and a few missing, columns the import does not use, a few unusable layers; each EC derived
  from ECe by the rule ``data.ossl`` converts back with.
- ``soilgrids/``: sand and clay as SoilGrids 2.0 ships them: int16 g/kg in Interrupted Goode Homolosine at 250 m,
  layers 0-5 and 5-15 cm, GeoTIFF tiles under a VRT per layer (``sand/sand_0-5cm_mean.vrt``).
- ``worldclim/``: WorldClim 2.1's monthly files at 30 arc-seconds, ``wc2.1_30s_{tmin,tmax,tavg,prec}_{01..12}.tif``,
  whose aggregates (coldest-month tmin, warmest-month tmax, mean tavg, driest/wettest/mean monthly prec) are the
  world's climate covariates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from rasterio.transform import from_origin

from deepsalt.data.cog import write_cog
from deepsalt.data.ossl import EC_RULES, MIR_COLUMN, OSSL
from deepsalt.data.products import HOMOLOSINE
from deepsalt.data.synthetic.fields import climate_product, texture_product

#: OSSL's MIR grid
OSSL_WN = np.arange(600.0, 4000.0 + 1, 2.0)
#: a layer's top 0-5 cm is sandier than the 5-15 cm below by this much (%, the same for clay with the sign turned),
#: so that only the 5/12 : 7/12 weighting gives back the 0-12 cm value
LAYER_SAND_DIFF = 1.5


def native_bbox(cfg, margin: float = 0.1) -> tuple[float, float, float, float]:
    """The box the native covariate products cover: the seen and held-out regions (every scene, site and lab sample),
    grown by ``margin`` degrees (a scene centred near a region's edge reaches past it)."""
    (a0, b0, a1, b1), (c0, d0, c1, d1) = cfg.seen_bbox, cfg.unseen_bbox
    return (min(a0, c0) - margin, min(b0, d0) - margin, max(a1, c1) + margin, max(b1, d1) + margin)


def write_native_products(out: Path, cfg, fields, phys) -> dict:
    """SoilGrids and WorldClim as downloaded, into ``out/native``: they depend on the world's fields alone, so
    `build_world` writes them in a thread beside everything else (most of their time is NumPy and GDAL, which let
    go of the GIL)."""
    d = out / "native"
    d.mkdir(exist_ok=True)
    return {"soilgrids": _soilgrids(d, cfg, fields, phys), "worldclim": _worldclim(d, cfg, fields, phys)}


def write_native(out: Path, sites: pd.DataFrame, lab_meta: pd.DataFrame, wn: np.ndarray, spectra: np.ndarray,
                 products: dict) -> dict:
    """The sites and the OSSL download beside ``products`` (``write_native_products``); their paths, relative to ``out``."""
    d = out / "native"
    d.mkdir(exist_ok=True)
    files = {"sites": _sites(d, sites), "ossl": _ossl(d, lab_meta, wn, spectra), **products}
    return {k: str(Path(v).relative_to(out)) for k, v in files.items()}


def _sites(d: Path, sites: pd.DataFrame) -> Path:
    path = d / "sites.csv"
    pd.DataFrame({"site_id": sites["site_id"], "lon": sites["longitude"], "lat": sites["latitude"], "date": sites["date"],
                  "ece_dsm": sites["ece_dsm"], "soc": sites["soc"], "region": sites["region"]}).to_csv(path, index=False)
    return path


#: the lab library's datasets as an OSSL download mixes them: (dataset, extract its EC comes from, share of samples);
#: KSSL's samples are a 0-12 cm layer with a saltier 12-30 cm one below, LUCAS's one 0-20 cm layer
OSSL_DATASETS = (("KSSL.SSL", "1:2", 0.7), ("LUCAS.SSL", "1:5", 0.3))
#: every this-many-th KSSL sample has no site id (each such layer is a profile of its own)
NO_SITE_EVERY = 50
#: layers of a third dataset with SOC but no EC and no lower depth: read, counted and left out
OSSL_UNUSABLE = 4


def _uuid(*parts) -> str:
    import hashlib

    return hashlib.md5(":".join(map(str, parts)).encode()).hexdigest()  # OSSL's layer ids are hex digests too


def ossl_layout(n: int) -> pd.DataFrame:
    """Per lab sample: its dataset, its site id (numbered from 1001 within each dataset, so KSSL's and LUCAS's ids
    collide; missing for every ``NO_SITE_EVERY``-th KSSL sample), its top layer's id, and the sample id that
    `deepsalt lab import` gives it (``dataset:site``, or ``dataset:layer <uuid>`` without a site id)."""
    i = np.arange(n)
    share = np.cumsum([f for *_, f in OSSL_DATASETS])
    k = np.searchsorted(share, (i % 10 + 0.5) / 10)
    dataset = np.array([OSSL_DATASETS[j][0] for j in k], dtype=object)
    site = np.empty(n, dtype=object)
    for name, *_ in OSSL_DATASETS:
        at = np.flatnonzero(dataset == name)
        site[at] = [str(1001 + j) for j in range(len(at))]
    kssl = np.flatnonzero(dataset == "KSSL.SSL")
    site[kssl[NO_SITE_EVERY - 1::NO_SITE_EVERY]] = None
    layer = [_uuid(d, f"sample{j}" if s is None else s, 0) for j, (d, s) in enumerate(zip(dataset, site))]
    sample_id = [f"{d}:layer {u}" if s is None else f"{d}:{s}" for d, s, u in zip(dataset, site, layer)]
    return pd.DataFrame({"dataset": dataset, "site": site, "layer": layer, "sample_id": sample_id})


def _ossl(d: Path, meta: pd.DataFrame, wn: np.ndarray, spectra: np.ndarray) -> Path:
    """The lab library as a real OSSL v1.2 download has it: several datasets (``OSSL_DATASETS``) in one EC column, each
    from its own extract; site ids that collide across datasets and a few missing ones; KSSL's deeper 12-30 cm layer
    (saltier, more carbon, its spectrum shifted) that depth selection must leave out; the soil-lab table at both levels
    (L0 with LUCAS's EC in its reported mS/m, which L1 harmonises to dS/m); columns the import does not use; and a few
    layers of a third dataset without EC or lower depth."""
    o = d / "ossl"
    o.mkdir()
    lay = ossl_layout(len(meta))
    assert (lay["sample_id"].to_numpy() == meta["sample_id"].to_numpy()).all(), "the world's lab ids follow ossl_layout"
    method = dict((name, m) for name, m, _ in OSSL_DATASETS)
    mir = np.stack([np.interp(OSSL_WN, wn, s) for s in spectra]).astype(np.float32)
    rows = []
    for deep in (False, True):
        take = (lay["dataset"] == "KSSL.SSL").to_numpy() if deep else np.ones(len(meta), bool)
        m, ly = meta[take], lay[take]
        ece = m["ece_dsm"].to_numpy(float) * (1.5 if deep else 1.0)
        ec = np.empty(len(m))
        for name, rule in method.items():
            at = (ly["dataset"] == name).to_numpy()
            ec[at] = EC_RULES[rule].to_extract(ece[at])  # the extract's EC that the dataset's rule turns back into ECe
        lucas = (ly["dataset"] == "LUCAS.SSL").to_numpy()
        rows.append(pd.DataFrame({
            OSSL["layer"]: [_uuid(dd, u if pd.isna(s) else s, 12) for dd, s, u in zip(ly["dataset"], ly["site"], ly["layer"])]
            if deep else ly["layer"].to_numpy(),
            OSSL["dataset"]: ly["dataset"].to_numpy(), OSSL["site"]: ly["site"].to_numpy(),
            OSSL["lat"]: m["latitude"].to_numpy(), OSSL["lon"]: m["longitude"].to_numpy(),
            OSSL["top"]: 12.0 if deep else 0.0, OSSL["bottom"]: 30.0 if deep else np.where(lucas, 20.0, 12.0),
            OSSL["ec"]: ec, "_ec_l0": np.where(lucas, ec * 100.0, ec),  # LUCAS reports mS/m
            OSSL["soc"]: m["soc"].to_numpy(float) * (1.5 if deep else 1.0),
            "_mir": list(mir[take] + (0.02 if deep else 0.0))}))
    extra = pd.DataFrame({OSSL["layer"]: [_uuid("AFSIS1.SSL", j) for j in range(OSSL_UNUSABLE)], OSSL["dataset"]: "AFSIS1.SSL",
                          OSSL["site"]: [f"icr{j:06d}" for j in range(OSSL_UNUSABLE)], OSSL["lat"]: meta["latitude"].iloc[0],
                          OSSL["lon"]: meta["longitude"].iloc[0], OSSL["top"]: 0.0, OSSL["bottom"]: np.nan,
                          OSSL["ec"]: np.nan, "_ec_l0": np.nan, OSSL["soc"]: 1.0, "_mir": list(mir[:OSSL_UNUSABLE])})
    layers = pd.concat(rows + [extra], ignore_index=True)
    n = len(layers)
    site = layers[[OSSL["layer"], OSSL["dataset"], OSSL["site"], OSSL["lat"], OSSL["lon"], OSSL["top"], OSSL["bottom"]]].assign(**{
        "id.project_ascii_txt": layers[OSSL["dataset"]].str.replace(".SSL", "", regex=False) + " project",
        "location.point.error_any_m": 30.0, "observation.date.begin_iso.8601_yyyy.mm.dd": "2019-06-01"})
    gz = {"method": "gzip", "mtime": 0}  # no write time in the gzip header: the same seed gives the same bytes
    site.to_csv(o / "ossl_soilsite_L0_v1.2.csv.gz", index=False, compression=gz)
    lab = layers[[OSSL["layer"], OSSL["ec"], OSSL["soc"]]].assign(**{"ph.h2o_usda.a268_index": np.full(n, 7.8)})
    lab.to_csv(o / "ossl_soillab_L1_v1.2.csv.gz", index=False, compression=gz)
    lab.assign(**{OSSL["ec"]: layers["_ec_l0"]}).to_csv(o / "ossl_soillab_L0_v1.2.csv.gz", index=False, compression=gz)
    _csv_gz(o / "ossl_mir_L0_v1.2.csv.gz", {OSSL["layer"]: layers[OSSL["layer"]].to_numpy(),
                                            "scan_mir.model_name_utf8_txt": np.full(n, "Bruker Vertex 70 with HTS-XT accessory"),
                                            **dict(zip([MIR_COLUMN.format(int(w)) for w in OSSL_WN],
                                                       np.stack(layers["_mir"].to_numpy()).T))})
    return o


def _csv_gz(path: Path, columns: dict) -> None:
    """A gzipped CSV of wide float32 columns, written by Arrow (pandas takes ~10x as long on 1,701 columns)."""
    import gzip

    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = pa.table({k: pa.array(v) for k, v in columns.items()})
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as f:
        pacsv.write_csv(table, f)


def _snap(bbox, res):
    """``bbox`` grown to the world's covariate grid (origin at the covariate box's corner), so the products share it."""
    return tuple(np.round(np.asarray(bbox) / res) * res)


def _lonlat_grid(bbox, res):
    x0, y0, x1, y1 = bbox
    nx, ny = int(round((x1 - x0) / res)), int(round((y1 - y0) / res))
    return np.meshgrid(x0 + (np.arange(nx) + 0.5) * res, y1 - (np.arange(ny) + 0.5) * res), from_origin(x0, y1, res, res)


def _soilgrids(d: Path, cfg, fields, phys, res: float = 250.0, tiles: int = 2) -> Path:
    """sand and clay (int16 g/kg) on a 250 m Homolosine grid over the covariate box, 2 x 2 tiles per layer, a VRT each."""
    from pyproj import Transformer

    s = d / "soilgrids"
    to_igh = Transformer.from_crs("EPSG:4326", HOMOLOSINE, always_xy=True)
    x0, y0, x1, y1 = native_bbox(cfg)
    xs, ys = to_igh.transform([x0, x1, x0, x1, (x0 + x1) / 2], [y0, y0, y1, y1, y0])
    left, right = np.floor(min(xs) / res) * res - res, np.ceil(max(xs) / res) * res + res
    bottom, top = np.floor(min(ys) / res) * res - res, np.ceil(max(ys) / res) * res + res
    nx, ny = int((right - left) / res), int((top - bottom) / res)
    cols, rows = np.meshgrid(np.arange(nx), np.arange(ny))
    lon, lat = Transformer.from_crs(HOMOLOSINE, "EPSG:4326", always_xy=True).transform(left + (cols + 0.5) * res, top - (rows + 0.5) * res)
    sand, clay = texture_product(fields, lon, lat, phys, grid=True)
    for name, v, sign in (("sand", sand, 1.0), ("clay", clay, -1.0)):
        for depth, shift in (("0-5cm", LAYER_SAND_DIFF), ("5-15cm", -LAYER_SAND_DIFF * 5 / 7)):
            layer = np.round(10 * (v + sign * shift)).astype(np.int16)  # g/kg, as SoilGrids stores them
            folder = s / name / f"{name}_{depth}_mean"
            folder.mkdir(parents=True)
            parts = []
            th, tw = -(-ny // tiles), -(-nx // tiles)
            for i in range(tiles):
                for j in range(tiles):
                    block = layer[i * th:(i + 1) * th, j * tw:(j + 1) * tw]
                    if not block.size:
                        continue
                    f = folder / f"tileSG-{i:03d}-{j:03d}.tif"
                    with rasterio.open(f, "w", driver="GTiff", height=block.shape[0], width=block.shape[1], count=1, dtype="int16",
                                       crs=HOMOLOSINE, transform=from_origin(left + j * tw * res, top - i * th * res, res, res),
                                       nodata=-32768, tiled=True, compress="deflate") as dst:
                        dst.write(block, 1)
                    parts.append((f.relative_to(s / name), j * tw, i * th, block.shape[1], block.shape[0]))
            _vrt(s / name / f"{name}_{depth}_mean.vrt", nx, ny, from_origin(left, top, res, res), parts)
    return s


def _vrt(path: Path, nx: int, ny: int, transform, parts) -> None:
    """A VRT over GeoTIFF tiles, as ISRIC serves each SoilGrids layer."""
    from pyproj import CRS

    srcs = "".join(
        f'<SimpleSource><SourceFilename relativeToVRT="1">{f.as_posix()}</SourceFilename><SourceBand>1</SourceBand>'
        f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/><DstRect xOff="{x}" yOff="{y}" xSize="{w}" ySize="{h}"/></SimpleSource>'
        for f, x, y, w, h in parts)
    gt = ", ".join(repr(float(v)) for v in transform.to_gdal())
    path.write_text(f'<VRTDataset rasterXSize="{nx}" rasterYSize="{ny}"><SRS>{CRS.from_user_input(HOMOLOSINE).to_wkt()}</SRS>'
                    f'<GeoTransform>{gt}</GeoTransform><VRTRasterBand dataType="Int16" band="1">'
                    f'<NoDataValue>-32768</NoDataValue>{srcs}</VRTRasterBand></VRTDataset>\n')


def monthly(annual: dict) -> dict[str, np.ndarray]:
    """12 monthly grids per WorldClim variable whose aggregates are the annual covariates exactly: tmin lowest in
    January at the coldest-month minimum, tmax highest in July at the warmest-month maximum, tavg a cosine around its
    annual mean; prec at its wettest value in January, its driest in July and the same in every other month, so that
    the mean is the mean monthly precipitation."""
    m = np.arange(1, 13)
    c = np.cos(2 * np.pi * (m - 7) / 12)  # -1 in January, +1 in July; sums to 0
    tmin = [annual["tmin"] + 10.0 * (1 + ci) for ci in c]
    tmax = [annual["tmax"] - 10.0 * (1 - ci) for ci in c]
    tavg = [annual["tavg"] + 10.0 * ci for ci in c]
    rest = (12 * annual["pavg"] - annual["pmax"] - annual["pmin"]) / 10
    prec = [annual["pmax"] if k == 1 else annual["pmin"] if k == 7 else rest for k in m]
    return {"tmin": tmin, "tmax": tmax, "tavg": tavg, "prec": prec}


def _worldclim(d: Path, cfg, fields, phys) -> Path:
    w = d / "worldclim"
    w.mkdir()
    (lon, lat), tr = _lonlat_grid(_snap(native_bbox(cfg), phys.climate_product_deg), phys.climate_product_deg)
    clim = climate_product(fields, lon, lat, phys, grid=True)
    for var, months in monthly(clim).items():
        for k, grid in enumerate(months, start=1):
            write_cog(w / f"wc2.1_30s_{var}_{k:02d}.tif", np.asarray(grid, np.float32), "EPSG:4326", tr, -3.4e38)
    return w
