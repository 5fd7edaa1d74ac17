"""The synthetic world's inputs as users have them, in ``WORLD/native/``: what `deepsalt sites`, `deepsalt lab import`
and `deepsalt covariates build` read, so that the demo and CI train from the same files a real user would.

- ``sites.csv``: field sites with a sampling date (``lon``, ``lat``, ``date``, ``ece_dsm``, ``soc``, ``region``,
  ``site_id``), a few days from the scene they were sampled beside.
- ``ossl/``: the lab library in OSSL v1.2's layout, as its portal ships it: ``ossl_soilsite_L0_v1.2.csv.gz``,
  ``ossl_soillab_L1_v1.2.csv.gz`` and ``ossl_mir_L0_v1.2.csv.gz``, joined by ``id.layer_uuid_txt``; MIR at
  600-4000 cm-1 in 2 cm-1 steps; EC of the 1:2 extract derived from ECe by the rule ``data.ossl`` converts back with;
  each sample is a 0-12 cm layer of its profile, with a deeper 12-30 cm layer that depth selection must leave out.
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


def write_native(out: Path, cfg, sites: pd.DataFrame, lab_meta: pd.DataFrame, wn: np.ndarray, spectra: np.ndarray,
                 fields, phys) -> dict:
    d = out / "native"
    d.mkdir()
    files = {"sites": _sites(d, sites), "ossl": _ossl(d, lab_meta, wn, spectra), "soilgrids": _soilgrids(d, cfg, fields, phys),
             "worldclim": _worldclim(d, cfg, fields, phys)}
    return {k: str(Path(v).relative_to(out)) for k, v in files.items()}


def _sites(d: Path, sites: pd.DataFrame) -> Path:
    path = d / "sites.csv"
    pd.DataFrame({"site_id": sites["site_id"], "lon": sites["longitude"], "lat": sites["latitude"], "date": sites["date"],
                  "ece_dsm": sites["ece_dsm"], "soc": sites["soc"], "region": sites["region"]}).to_csv(path, index=False)
    return path


def _ossl(d: Path, meta: pd.DataFrame, wn: np.ndarray, spectra: np.ndarray) -> Path:
    """Two layers per sample (0-12 cm, the sample itself; 12-30 cm, saltier and with more carbon, its spectrum shifted)."""
    o = d / "ossl"
    o.mkdir()
    a, b = EC_RULES["1:2"].slope, EC_RULES["1:2"].intercept
    mir = np.stack([np.interp(OSSL_WN, wn, s) for s in spectra]).astype(np.float32)
    rows = []
    for deep in (False, True):
        uuid = meta["sample_id"] + ("-12-30" if deep else "-0-12")
        ece = meta["ece_dsm"].to_numpy(float) * (1.5 if deep else 1.0)
        rows.append(pd.DataFrame({
            OSSL["layer"]: uuid, OSSL["site"]: meta["sample_id"], OSSL["lat"]: meta["latitude"], OSSL["lon"]: meta["longitude"],
            OSSL["top"]: 12.0 if deep else 0.0, OSSL["bottom"]: 30.0 if deep else 12.0,
            OSSL["ec"]: (ece - b) / a,  # the 1:2 extract's EC that the rule turns back into this ECe
            OSSL["soc"]: meta["soc"].to_numpy(float) * (1.5 if deep else 1.0),
            "_mir": list(mir + (0.02 if deep else 0.0))}))
    layers = pd.concat(rows, ignore_index=True)
    site = layers[[OSSL["layer"], OSSL["site"], OSSL["lat"], OSSL["lon"], OSSL["top"], OSSL["bottom"]]].assign(
        **{"dataset.code_ascii_txt": "DEEPSALT.SYNTHETIC"})
    site.to_csv(o / "ossl_soilsite_L0_v1.2.csv.gz", index=False)
    layers[[OSSL["layer"], OSSL["ec"], OSSL["soc"]]].to_csv(o / "ossl_soillab_L1_v1.2.csv.gz", index=False)
    _csv_gz(o / "ossl_mir_L0_v1.2.csv.gz", {OSSL["layer"]: layers[OSSL["layer"]].to_numpy(),
                                            **dict(zip([MIR_COLUMN.format(int(w)) for w in OSSL_WN],
                                                       np.stack(layers["_mir"].to_numpy()).T))})
    return o


def _csv_gz(path: Path, columns: dict) -> None:
    """A gzipped CSV of wide float32 columns, written by Arrow (pandas takes ~10x as long on 1,701 columns)."""
    import gzip

    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = pa.table({k: pa.array(v) for k, v in columns.items()})
    with gzip.open(path, "wb", compresslevel=1) as f:
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
