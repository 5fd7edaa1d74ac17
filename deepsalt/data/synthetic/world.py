"""Build the synthetic world on disk, in the real formats (see README, "The synthetic world").

Layout of ``OUT``::

    world.json                     generator config, physics, summary statistics, file list
    world.png                      a scene's RGB, its true ECe, lab and EnMAP spectra at low/high ECe
    lab/mir_library.parquet        OSSL-style wide table: scan_mir.<cm-1>_abs columns + sample metadata
    stac/collection.json           STAC Collection ENMAP_HSI_L2A, a relocatable static catalog: it links
                                   scenes/<id>/<id>.json, whose asset hrefs are relative (./<file>)
    stac/items.json                FeatureCollection of the same Items with absolute hrefs (serve with `rustac serve`)
    scenes/<id>/<id>-*.TIF|XML     spectral image COG (224 x int16), quality COGs, metadata XML
    truth/<id>_{ECE,SOC}.TIF       ground-truth ECe and SOC per scene (float32, same grid); with a second epoch also
                                   <id>_CHANGE.TIF for its scenes (+1 salinised, -1 reclaimed, 0 unchanged)
    covariates/<name>.tif          8 covariate COGs, EPSG:4326 at 0.01 deg
    samples/satellite_samples.parquet   labelled sites: 224 reflectances (NaN in the bad bands), 8 covariates, ECe, SOC,
                                   sampling date, region, Köppen, texture
    native/                        the same inputs as users have them (data.synthetic.native): sites.csv, ossl/,
                                   soilgrids/, worldclim/
    deliveries/<id>.ZIP            with ``deliveries``: each scene as DLR ships it (data.synthetic.deliveries)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from pyproj import Transformer
from rasterio.transform import from_origin
from scipy.ndimage import binary_dilation, gaussian_filter
from tqdm import tqdm

from deepsalt import __version__
from deepsalt.config import QUALITY_ASSETS, WorldConfig
from deepsalt.data.cog import write_cog
from deepsalt.data.covariates import COVARIATES, COVARIATE_NAMES, sample_covariates
from deepsalt.data.l2a_product import layer_file, metadata_xml
from deepsalt.data.lab import write_lab_table
from deepsalt.data.stac import enmap_item, write_item_collection, write_static_collection
from deepsalt.data.synthetic import enmap_spectra, lab_spectra
from deepsalt.data.synthetic.deliveries import (BAD_BANDS, FORMATS, NOTE, layer_arrays, scene_metadata,
                                                write_delivery)
from deepsalt.data.synthetic.native import native_bbox, ossl_layout, write_native, write_native_products
from deepsalt.data.synthetic.fields import (CHANGE_DOWN, CHANGE_AT, CHANGE_UP, RandomFields, SoilPhysics, climate_product,
                                          ece_change, koppen, soil_at, texture_product, usda_texture)
from deepsalt.errors import DeepSaltInputError
from deepsalt.spectra.bands import enmap_bands
from deepsalt.spectra.mir import mir_grid

NODATA = -32768
PIXEL = 30.0
#: organic matter / organic carbon (van Bemmelen's factor, as soil surveys convert them)
OM_PER_SOC = 1.724
#: a core's SOC differs from its 30 m pixel's by this sd of ln SOC (point versus pixel)
SOC_POINT_SD = 0.15
#: sites were sampled within this many days of their scene's overpass
SITE_DAYS = 3
CHUNK_ROWS = 32  # rows rendered at once: bounds memory at scene_px x 32 x 224 floats


def _utm_epsg(lon: float) -> int:
    return 32600 + int((lon + 180) // 6) + 1


def _scene_layout(cfg: WorldConfig, rng: np.random.Generator) -> list[dict]:
    """Scene centres: seen scenes alternate UTM zones 12/13 (split at -108 deg), then held-out ones."""
    scenes = []
    x0, y0, x1, y1 = cfg.seen_bbox
    for i in range(cfg.n_seen_scenes):
        lo, hi = (x0, -108.05) if i % 2 == 0 else (-107.95, x1)
        scenes.append(dict(region="seen", lon=rng.uniform(lo + 0.05, hi - 0.05), lat=rng.uniform(y0 + 0.05, y1 - 0.05)))
    x0, y0, x1, y1 = cfg.unseen_bbox
    for _ in range(cfg.n_unseen_scenes):
        scenes.append(dict(region="unseen", lon=rng.uniform(x0 + 0.05, x1 - 0.05), lat=rng.uniform(y0 + 0.05, y1 - 0.05)))
    start = datetime(2024, 5, 20, 18, 5, tzinfo=timezone.utc)
    for i, s in enumerate(scenes):
        s["datetime"] = start + timedelta(days=7 * i, minutes=3 * i)
        s["epsg"] = _utm_epsg(s["lon"])
        dt = s["datetime"].strftime("%Y%m%dT%H%M%SZ")
        s["id"] = f"ENMAP01-____L2A-DT{1000000000 + i:010d}_{dt}_{i + 1:03d}_V010402_20240801T000000Z"
    return scenes


def _masks(n: int, cover: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Cloud (smooth blobs at the requested cover), their shadows (offset), haze and snow (none here)."""
    def blobs(frac, sigma):
        if frac <= 0:
            return np.zeros((n, n), bool)
        f = gaussian_filter(rng.standard_normal((n, n)), sigma)
        return f > np.quantile(f, 1 - frac)
    cloud = blobs(cover, n / 16)
    shadow = np.roll(np.roll(cloud, n // 14, axis=0), n // 10, axis=1) & ~cloud
    haze = blobs(rng.uniform(0.0, 0.15), n / 10) & ~cloud & ~shadow
    return dict(cloud=cloud, cloud_shadow=shadow, haze=haze, snow=np.zeros((n, n), bool))


def _render_scene(scene: dict, cfg: WorldConfig, fields: RandomFields, phys: SoilPhysics, basis, snr_b,
                  rng: np.random.Generator, bands, changed: bool = False) -> dict:
    """One scene's DN, masks and truth; ``changed``: the second epoch's soil (``ece_change``: ECe x CHANGE_UP or
    / CHANGE_DOWN in the changed patches, with everything that depends on it), the change class in ``r["change"]``."""
    n = cfg.scene_px
    to_utm = Transformer.from_crs("EPSG:4326", f"EPSG:{scene['epsg']}", always_xy=True)
    cx, cy = to_utm.transform(scene["lon"], scene["lat"])
    x0 = np.floor((cx - n * PIXEL / 2) / PIXEL) * PIXEL
    y0 = np.ceil((cy + n * PIXEL / 2) / PIXEL) * PIXEL
    transform = from_origin(x0, y0, PIXEL, PIXEL)
    to_ll = Transformer.from_crs(f"EPSG:{scene['epsg']}", "EPSG:4326", always_xy=True)
    cols, rows = np.meshgrid(np.arange(n), np.arange(n))
    px, py = x0 + (cols + 0.5) * PIXEL, y0 - (rows + 0.5) * PIXEL
    lon, lat = to_ll.transform(px, py)
    # Real L2A tiles are rotated swaths cut to a square: a nodata corner.
    footprint = ~(cols < 0.25 * n * (1 - rows / (0.5 * n)))
    cover = float(rng.uniform(0.0, cfg.max_cloud_cover))
    masks = _masks(n, cover, rng)
    atm_scene = rng.standard_normal(len(bands)) * basis["atm_scene"]
    wv_anom = gaussian_filter(rng.standard_normal((n, n)), n / 8)
    wv_anom /= wv_anom.std() + 1e-9
    refl = np.empty((len(bands), n, n), np.float32)
    ece = np.empty((n, n), np.float32)
    change = ece_change(fields, lon, lat, grid=True) if changed else None
    offset = 0.0 if change is None else np.select([change > 0, change < 0], [np.log(CHANGE_UP), -np.log(CHANGE_DOWN)], 0.0)
    soil = soil_at(fields, lon, lat, phys, grid=True, ln_ece_offset=offset)
    ece[:] = soil["ece"]
    for r0 in range(0, n, CHUNK_ROWS):
        sl = slice(r0, min(r0 + CHUNK_ROWS, n))
        block = enmap_spectra.render({k: v[sl].ravel() for k, v in soil.items()}, basis, snr_b, atm_scene,
                                     wv_anom[sl].ravel(), rng)
        refl[:, sl, :] = block.T.reshape(len(bands), -1, n)
    # Clouds are bright, shadows dark, haze adds blue-weighted path radiance.
    cloud_spec = basis["cloud"][:, None] * (0.9 + 0.2 * rng.random(masks["cloud"].sum()))[None]
    refl[:, masks["cloud"]] = cloud_spec + 0.005 * rng.standard_normal(cloud_spec.shape)
    refl[:, masks["cloud_shadow"]] *= 0.35
    blue = np.exp(-(bands.centers_nm - 400) / 300).astype(np.float32)
    refl[:, masks["haze"]] += 0.04 * blue[:, None]
    dn = np.clip(np.round(refl * 10000), -32000, 32000).astype(np.int16)
    dn[:, ~footprint] = NODATA
    dn[np.isin(np.arange(1, len(bands) + 1), BAD_BANDS)] = NODATA  # as DLR fills an L2A product's bad bands
    ece[~footprint] = np.nan
    soc = (soil["om"] / OM_PER_SOC).astype(np.float32)
    soc[~footprint] = np.nan
    return dict(dn=dn, ece=ece, soc=soc, masks={k: (v & footprint).astype(np.uint8) for k, v in masks.items()},
                footprint=footprint, transform=transform, lon=lon, lat=lat, cloud_cover=cover,
                haze_cover=float(masks["haze"][footprint].mean()), change=change)


def _water_and_cirrus(r: dict, bands, site_rows, site_cols, rng: np.random.Generator) -> None:
    """Add a lake and thin-to-thick cirrus to a rendered scene, away from its field sites (a survey samples no lake,
    and the sites' spectra stay what their labels were measured under). Water is dark and falls to near zero
    in the NIR; cirrus adds a flat brightening that grows with its level. Fills ``r["classes"]`` (1 land, 2 water,
    3 background) and ``r["masks"]["cirrus"]`` (0 none, 1 thin, 2 medium, 3 thick), and sets the truth to NaN on
    water. Drawn from its own generator, so the rest of the world is the same as without them."""
    n = r["dn"].shape[1]
    fp = r["footprint"]
    near_site = np.zeros((n, n), bool)
    near_site[site_rows, site_cols] = True
    near_site = binary_dilation(near_site, iterations=3)

    def blob(frac, sigma):
        f = gaussian_filter(rng.standard_normal((n, n)), sigma)
        return f, f > np.quantile(f, 1 - frac)

    _, water = blob(rng.uniform(0.01, 0.04), n / 20)
    water &= fp & ~near_site & ~r["masks"]["cloud"].astype(bool)
    f, cirrus = blob(rng.uniform(0.02, 0.08), n / 12)
    cirrus &= fp & ~near_site & ~water & ~r["masks"]["cloud"].astype(bool)
    level = np.zeros((n, n), np.uint8)
    if cirrus.any():
        q1, q2 = np.quantile(f[cirrus], [1 / 3, 2 / 3])
        level[cirrus] = 1 + (f[cirrus] > q1) + (f[cirrus] > q2)
    wl = bands.centers_nm.astype(np.float32)
    water_refl = 0.045 * np.exp(-(wl - 450) / 120) + 0.003 + 0.02 * np.exp(-0.5 * ((wl - 570) / 40) ** 2)
    good = np.flatnonzero(r["dn"][:, fp].max(axis=1) != NODATA)[:, None]  # bands with data (not the bad ones)
    wr, wc = np.nonzero(water)
    noise = 0.002 * rng.standard_normal((len(wl), len(wr)))
    r["dn"][good, wr, wc] = np.round((water_refl[:, None] + noise)[good[:, 0]] * 10000).astype(np.int16)
    cr, cc = np.nonzero(cirrus)
    lift = np.round(120 * level[cr, cc]).astype(np.int16)  # cirrus lifts reflectance by ~1.2 % per level, flat
    r["dn"][good, cr, cc] += lift[None, :]
    r["ece"][water] = np.nan
    r["soc"][water] = np.nan
    r["classes"] = np.where(fp, np.where(water, 2, 1), 3).astype(np.uint8)
    r["masks"]["cirrus"] = level
    r["cirrus_cover"] = float(cirrus[fp].mean())


def _write_scene(out: Path, scene: dict, r: dict, bands) -> dict:
    sid, crs = scene["id"], f"EPSG:{scene['epsg']}"
    d = out / "scenes" / sid
    d.mkdir(parents=True)
    files = {"image": d / f"{sid}-SPECTRAL_IMAGE_COG.TIF"}
    write_cog(files["image"], r["dn"], crs, r["transform"], NODATA, descriptions=list(bands.names))
    for key, arr in layer_arrays(r).items():
        if key in QUALITY_ASSETS:  # the layers DeepSalt applies; TESTFLAGS and PIXELMASK come with the deliveries only
            files[key] = d / f"{sid}-{layer_file(key)}_COG.TIF"
            write_cog(files[key], arr, crs, r["transform"])
    files["metadata"] = d / f"{sid}-METADATA.XML"
    n = r["dn"].shape[1]
    files["metadata"].write_bytes(metadata_xml(scene_metadata(scene, r, bands, "GeoTIFF+Metadata"), files["image"].name,
                                               n, n, NOTE))
    (out / "truth").mkdir(exist_ok=True)
    for name in ("ece", "soc"):  # deepsalt.targets names them: truth/<id>_ECE.TIF, _SOC.TIF
        write_cog(out / "truth" / f"{sid}_{name.upper()}.TIF", r[name], crs, r["transform"], np.nan)
    return files


def _write_covariates(out: Path, cfg: WorldConfig, fields, phys) -> None:
    """The 8 covariates as their products come: texture on SoilGrids' 250 m, climate on WorldClim's 30", each with
    its product's error (``SoilPhysics``)."""
    x0, y0, x1, y1 = cfg.covariate_bbox

    def lonlat(res):
        nx, ny = int(round((x1 - x0) / res)), int(round((y1 - y0) / res))
        return np.meshgrid(x0 + (np.arange(nx) + 0.5) * res, y1 - (np.arange(ny) + 0.5) * res)

    sand, clay = texture_product(fields, *lonlat(phys.soil_product_deg), phys, grid=True)
    clim = climate_product(fields, *lonlat(phys.climate_product_deg), phys, grid=True)
    values = dict(sand=sand, clay=clay, tm_min=clim["tmin"], tm_max=clim["tmax"], tm_avg=clim["tavg"],
                  pr_min=clim["pmin"], pr_max=clim["pmax"], pr_avg=clim["pavg"])
    (out / "covariates").mkdir()
    for c in COVARIATES:
        res = phys.soil_product_deg if c.name in ("sand", "clay") else phys.climate_product_deg
        write_cog(out / "covariates" / f"{c.name}.tif", values[c.name].astype(np.float32), "EPSG:4326",
                  from_origin(x0, y1, res, res), -9999.0, tags={"units": c.units, "description": c.description})


def _lab_library(cfg, scenes_sites: pd.DataFrame, fields, phys, rng) -> pd.DataFrame:
    n = cfg.n_lab
    n_near = int(round(cfg.lab_near_site_fraction * n))
    pick = rng.integers(0, len(scenes_sites), n_near)
    dist_km = rng.uniform(0.0, 1.5, n_near)
    ang = rng.uniform(0, 2 * np.pi, n_near)
    lat_near = scenes_sites["latitude"].to_numpy()[pick] + dist_km * np.sin(ang) / 110.57
    lon_near = scenes_sites["longitude"].to_numpy()[pick] + dist_km * np.cos(ang) / (111.32 * np.cos(np.radians(lat_near)))
    n_rest = n - n_near
    n_unseen = n_rest // 5
    boxes = [cfg.seen_bbox] * (n_rest - n_unseen) + [cfg.unseen_bbox] * n_unseen
    b = np.array(boxes)
    lon_far = rng.uniform(b[:, 0], b[:, 2])
    lat_far = rng.uniform(b[:, 1], b[:, 3])
    lon, lat = np.concatenate([lon_near, lon_far]), np.concatenate([lat_near, lat_far])
    soil = soil_at(fields, lon, lat, phys, ln_ece_offset=phys.point_sd * rng.standard_normal(n))  # a core, not a pixel
    ece = soil["ece"] * np.exp(phys.lab_ece_cv * rng.standard_normal(n))
    extra = np.random.default_rng([cfg.seed, 31])  # SOC: its own draws, the rest of the world unchanged
    soc = soil["om"] / OM_PER_SOC * np.exp(phys.lab_ece_cv * extra.standard_normal(n))
    wn = mir_grid()
    spectra = lab_spectra.lab_spectra(soil, wn, rng)
    meta = pd.DataFrame({
        "sample_id": ossl_layout(n)["sample_id"].to_numpy(), "latitude": lat, "longitude": lon,
        "depth_top_cm": 0.0, "depth_bottom_cm": 12.0, "ece_dsm": ece.astype(np.float32), "soc": soc.astype(np.float32),
        "region": np.where(soil["unseen_weight"] > 0.5, "unseen", "seen"),
    })
    return meta, wn, spectra


def _figure(path: Path, scene: dict, r: dict, bands, lab_meta, wn, lab_spec, sites: pd.DataFrame) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(12, 9))
    rgb_idx = [int(np.argmin(abs(bands.centers_nm - w))) for w in (640, 550, 460)]
    rgb = np.where(r["dn"][rgb_idx] == NODATA, 0, r["dn"][rgb_idx]).astype(float) / 10000
    ax[0, 0].imshow(np.clip(np.moveaxis(rgb, 0, -1) / np.nanpercentile(rgb, 98), 0, 1))
    ax[0, 0].set_title(f"EnMAP RGB quicklook\n{scene['id'][:40]}…", fontsize=9)
    im = ax[0, 1].imshow(r["ece"], cmap="magma_r", vmin=0, vmax=np.nanpercentile(r["ece"], 98))
    fig.colorbar(im, ax=ax[0, 1], label="ECe (dS/m)")
    ax[0, 1].set_title("True ECe (0-12 cm)")
    def groups(ece):  # the least and most saline tenths of a table
        lo, hi = np.quantile(ece, [0.1, 0.9])
        return [(ece <= lo, "tab:blue", f"ECe <= {lo:.1f}"), (ece >= hi, "tab:red", f"ECe >= {hi:.1f}")]

    for mask, color, label in groups(lab_meta["ece_dsm"].to_numpy()):
        ax[1, 0].plot(wn, lab_spec[mask].mean(0), color=color, label=f"lab mean, {label} dS/m (n={mask.sum()})")
    ax[1, 0].invert_xaxis()
    ax[1, 0].set(xlabel="wavenumber (cm-1)", ylabel="absorbance", title="Lab MIR spectra")
    ax[1, 0].legend()
    refl_cols = [c for c in sites.columns if c.startswith("refl_")]
    gap = np.r_[False, np.diff(bands.centers_nm) > 40]
    for mask, color, label in groups(sites["ece_dsm"].to_numpy()):
        y = sites.loc[mask, refl_cols].to_numpy().mean(0)
        ax[1, 1].plot(bands.centers_nm, np.where(gap, np.nan, y), color=color, label=f"site mean, {label} dS/m (n={mask.sum()})")
    ax[1, 1].set(xlabel="wavelength (nm)", ylabel="reflectance", title="EnMAP site spectra")
    ax[1, 1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def build_world(cfg: WorldConfig, out: str | Path, overwrite: bool = False, progress: bool = True,
                deliveries: bool = False) -> dict:
    """Generate the world into ``out`` atomically (a temporary sibling folder renamed at the end); with ``deliveries``
    also ``out/deliveries/<id>.ZIP``, each scene as DLR ships it."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DeepSaltInputError(out, "output folder exists and is not empty", "choose another --out or pass --overwrite")
    t0 = time.time()
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        summary = _build(cfg, tmp, progress, deliveries)
        summary["seconds"] = round(time.time() - t0, 1)
        (tmp / "world.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        # Item hrefs point into the final folder, so write them after we know it.
        _rewrite_hrefs(tmp, out.resolve())
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _second_epoch(out: Path, cfg: WorldConfig, scenes: list[dict], fields, phys, basis, snr_b, bands, items: list,
                  progress: bool) -> dict:
    """Every scene again one year later (the same season, other clouds, atmosphere and noise), over soil whose ECe
    changed in the known patches of ``ece_change`` and nowhere else; appended to ``items`` (one catalogue), truth
    as for the first epoch plus ``truth/<id>_CHANGE.TIF`` (int8: +1 salinised, -1 reclaimed, 0 unchanged, -128
    outside the scene). Drawn from generators of their own: the first epoch is the same as without it."""
    stats = []
    for i, s1 in enumerate(tqdm(scenes, desc="second epoch", disable=not progress)):
        scene = dict(s1, datetime=s1["datetime"] + timedelta(days=365))
        scene["id"] = (f"ENMAP01-____L2A-DT{1000000000 + 500 + i:010d}_{scene['datetime'].strftime('%Y%m%dT%H%M%SZ')}"
                       f"_{i + 1:03d}_V010402_20250801T000000Z")
        rng = np.random.default_rng([cfg.seed, 41, i])
        r = _render_scene(scene, cfg, fields, phys, basis, snr_b, rng, bands, changed=True)
        _water_and_cirrus(r, bands, np.zeros(0, int), np.zeros(0, int), np.random.default_rng([cfg.seed, 43, i]))
        files = _write_scene(out, scene, r, bands)
        change = np.where(r["footprint"], r["change"], -128).astype(np.int8)
        write_cog(out / "truth" / f"{scene['id']}_CHANGE.TIF", change, f"EPSG:{scene['epsg']}", r["transform"], -128)
        items.append(enmap_item(scene["id"], scene["datetime"], scene["epsg"], r["transform"], r["dn"].shape[1:], bands, files,
                                {"eo:cloud_cover": round(100 * r["cloud_cover"], 2), "enmap:haze_cover": round(100 * r["haze_cover"], 2),
                                 "enmap:cirrus_cover": round(100 * r["cirrus_cover"], 2)}))
        land = r["footprint"] & np.isfinite(r["ece"])
        stats.append(dict(id=scene["id"], first_epoch_id=s1["id"], region=scene["region"], datetime=scene["datetime"].isoformat(),
                          cloud_cover=round(r["cloud_cover"], 4), salinised_share=round(float((change[land] > 0).mean()), 4),
                          reclaimed_share=round(float((change[land] < 0).mean()), 4)))
    return {"scenes": stats, "change_at": CHANGE_AT, "salinised_factor": CHANGE_UP, "reclaimed_factor": CHANGE_DOWN}


def _rewrite_hrefs(tmp: Path, final: Path) -> None:
    for name in ("items.json",):
        p = tmp / "stac" / name
        p.write_text(p.read_text().replace(str(tmp.resolve()), str(final)))


def _build(cfg: WorldConfig, out: Path, progress: bool, deliveries: bool = False) -> dict:
    fields, phys = RandomFields(cfg.seed), SoilPhysics()
    # the covariates and the native covariate products depend on the fields alone: written in threads beside the
    # scenes (most of their time is NumPy and GDAL, which let go of the GIL); the block waits for them, also when the
    # rest fails, so nothing writes into the folder after build_world removed it
    with ThreadPoolExecutor(2, thread_name_prefix="covariates") as pool:
        covariates = pool.submit(_write_covariates, out, cfg, fields, phys)
        products = pool.submit(write_native_products, out, cfg, fields, phys)
        return _build_rest(cfg, out, progress, deliveries, fields, phys, covariates, products)


def _build_rest(cfg: WorldConfig, out: Path, progress: bool, deliveries: bool, fields, phys, covariates, products) -> dict:
    rng = np.random.default_rng(cfg.seed)
    bands = enmap_bands()
    basis, snr_b = enmap_spectra.band_basis(bands), enmap_spectra.snr(bands)
    scenes = _scene_layout(cfg, rng)
    items, site_tables, scene_stats, fig_args = [], [], [], None
    refl_cols = [f"refl_{b}" for b in bands.names]
    for i, scene in enumerate(tqdm(scenes, desc="scenes", disable=not progress)):
        r = _render_scene(scene, cfg, fields, phys, basis, snr_b, rng, bands)
        clear = r["footprint"] & ~(r["masks"]["cloud"] | r["masks"]["cloud_shadow"] | r["masks"]["haze"]).astype(bool)
        idx = np.flatnonzero(clear.ravel())
        pick = np.sort(rng.choice(idx, size=min(cfg.sites_per_scene, idx.size), replace=False))
        rows, cols = np.unravel_index(pick, clear.shape)
        _water_and_cirrus(r, bands, rows, cols, np.random.default_rng([cfg.seed, 23, i]))
        extra = np.random.default_rng([cfg.seed, 29, i])  # SOC and dates: their own draws, the rest of the world unchanged
        files = _write_scene(out, scene, r, bands)
        if deliveries:
            (out / "deliveries").mkdir(exist_ok=True)
            write_delivery(out / "deliveries", scene, r, bands, FORMATS[i % len(FORMATS)])
        items.append(enmap_item(scene["id"], scene["datetime"], scene["epsg"], r["transform"], r["dn"].shape[1:], bands, files,
                                {"eo:cloud_cover": round(100 * r["cloud_cover"], 2), "enmap:haze_cover": round(100 * r["haze_cover"], 2),
                                 "enmap:cirrus_cover": round(100 * r["cirrus_cover"], 2)}))
        soil = soil_at(fields, r["lon"][rows, cols], r["lat"][rows, cols], phys)
        sites = pd.DataFrame({"scene_id": scene["id"], "row": rows, "col": cols,
                              "longitude": r["lon"][rows, cols], "latitude": r["lat"][rows, cols],
                              "region": scene["region"],
                              # the label is a soil core's lab measurement: the pixel's ECe, the core's deviation
                              # from it (point vs pixel) and the lab's error
                              "ece_dsm": (r["ece"][rows, cols] * np.exp(np.hypot(phys.point_sd, phys.lab_ece_cv)
                                                                       * rng.standard_normal(len(rows)))).astype(np.float32),
                              "ece_pixel_dsm": r["ece"][rows, cols],
                              # a core's organic carbon: the pixel's, a point-vs-pixel deviation and the lab's error
                              "soc": (r["soc"][rows, cols] * np.exp(np.hypot(SOC_POINT_SD, phys.lab_ece_cv)
                                                                    * extra.standard_normal(len(rows)))).astype(np.float32),
                              # sampled in the field a few days from the scene's overpass
                              "date": [(scene["datetime"] + timedelta(days=int(dd))).date().isoformat()
                                       for dd in extra.integers(-SITE_DAYS, SITE_DAYS + 1, len(rows))],
                              "koppen": koppen(soil["tavg"], soil["tmin"], soil["pavg"]),
                              "texture_class": usda_texture(soil["sand"], soil["clay"])})
        dn_sites = r["dn"][:, rows, cols].T
        refl = pd.DataFrame(np.where(dn_sites == NODATA, np.nan, dn_sites.astype(np.float32) * np.float32(1e-4)), columns=refl_cols)
        site_tables.append(pd.concat([sites, refl], axis=1))
        valid = np.isfinite(r["ece"])
        scene_stats.append(dict(id=scene["id"], region=scene["region"], epsg=scene["epsg"],
                                datetime=scene["datetime"].isoformat(), cloud_cover=round(r["cloud_cover"], 4),
                                valid_pixels=int(valid.sum()), clear_pixels=int(clear.sum()),
                                water_pixels=int((r["classes"] == 2).sum()), cirrus_pixels=int((r["masks"]["cirrus"] > 0).sum()),
                                ece_median=float(np.nanmedian(r["ece"])), ece_p95=float(np.nanpercentile(r["ece"], 95))))
        if fig_args is None:
            fig_args = (scene, r)
    second = _second_epoch(out, cfg, scenes, fields, phys, basis, snr_b, bands, items, progress) if cfg.second_epoch else None
    sites = pd.concat(site_tables, ignore_index=True)
    sites.insert(0, "site_id", [f"S{i:05d}" for i in range(len(sites))])
    covariates.result()
    cov = sample_covariates(out / "covariates", sites["longitude"].to_numpy(), sites["latitude"].to_numpy())
    for j, name in enumerate(COVARIATE_NAMES):
        sites.insert(8 + j, name, cov[:, j])
    (out / "samples").mkdir()
    sites.to_parquet(out / "samples" / "satellite_samples.parquet", index=False)
    (out / "stac").mkdir()
    write_static_collection(items, out / "stac" / "collection.json")  # relocatable: relative hrefs
    write_item_collection(items, out / "stac" / "items.json")  # absolute hrefs, for `rustac serve` and tools
    lab_meta, wn, lab_spec = _lab_library(cfg, sites, fields, phys, rng)
    (out / "lab").mkdir()
    write_lab_table(out / "lab" / "mir_library.parquet", lab_meta, wn, lab_spec)
    _figure(out / "world.png", *fig_args, bands, lab_meta, wn, lab_spec, sites)
    native = write_native(out, sites, lab_meta, wn, lab_spec, products.result())
    ece_lab = lab_meta["ece_dsm"]
    return {
        "deepsalt_version": __version__, "config": cfg.model_dump(mode="json"), "physics": SoilPhysics().__dict__,
        "native_bbox": list(native_bbox(cfg)),  # what native/soilgrids and native/worldclim cover
        "scenes": scene_stats, **({"second_epoch": second} if second else {}),
        "lab": {"n": len(lab_meta), "channels": int(wn.size), "wavenumber_range_cm1": [float(wn.min()), float(wn.max())],
                "ece_percentiles": dict(zip(["p10", "p50", "p90", "p99"], np.percentile(ece_lab, [10, 50, 90, 99]).round(3).tolist())),
                "share_below_4_dsm": float((ece_lab < 4).mean()), "n_above_30_dsm": int((ece_lab > 30).sum())},
        "satellite_samples": {"n": len(sites), "by_region": sites["region"].value_counts().to_dict(),
                              "by_koppen": sites["koppen"].value_counts().to_dict()},
        "files": {"lab": "lab/mir_library.parquet", "stac_collection": "stac/collection.json", "stac_items": "stac/items.json",
                  "covariates": "covariates", "samples": "samples/satellite_samples.parquet", "truth": "truth", "figure": "world.png",
                  **({"deliveries": "deliveries"} if deliveries else {}), **{f"native_{k}": v for k, v in native.items()}},
    }
