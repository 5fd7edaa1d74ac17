"""What spectra, covariates and location each explain of the sites' ln ECe, under random and spatial CV.

Sites of the seen region; 5-fold CV, once random and once over the spatial blocks training uses
(``train.data.spatial_split``: square blocks as wide as the variogram range of ln ECe, halved until at least
10 hold sites). Models: ridge on log reflectance (spectra), random forest on the 8 covariates, random forest on
x/y in km (location), random forest on both. In a realistic world the covariates and the location explain
little under spatial CV (they are no fingerprint of a site), and location explains much more under random CV
(neighbouring sites leak across folds: the interpolation that a random test would reward).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from deepsalt.data.covariates import COVARIATE_NAMES


def explained_variance(sites: pd.DataFrame, seed: int = 0, trees: int = 200) -> dict:
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold, KFold, cross_val_predict

    from deepsalt.train.data import _km_xy, spatial_split

    s = sites[sites["region"] == "seen"].reset_index(drop=True)
    y = np.log(s["ece_dsm"].to_numpy(float))
    refl = s[[c for c in s.columns if c.startswith("refl_")]].to_numpy(float)
    refl = np.log(np.clip(refl[:, np.isfinite(refl).all(0)], 1e-3, None))
    xy = _km_xy(s["latitude"], s["longitude"], float(s["latitude"].mean()))
    split = spatial_split(s["latitude"], s["longitude"], s["ece_dsm"], 0, (0.8, 0.1, 0.1), seed)

    def rf():
        return RandomForestRegressor(trees, min_samples_leaf=2, n_jobs=-1, random_state=seed)

    inputs = {"spectra": (refl, lambda: RidgeCV(alphas=np.logspace(-6, 3, 19))), "covariates": (s[list(COVARIATE_NAMES)].to_numpy(float), rf),
              "location": (xy, rf), "spectra+covariates": (np.column_stack([refl, s[list(COVARIATE_NAMES)].to_numpy(float)]), rf)}
    r2: dict = {}
    for cv_name, cv, g in (("random", KFold(5, shuffle=True, random_state=seed), None), ("spatial", GroupKFold(5), split.blocks)):
        for name, (x, make) in inputs.items():
            p = cross_val_predict(make(), x, y, cv=cv, groups=g)
            r2.setdefault(cv_name, {})[name] = round(float(1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum()), 3)
    out = {"n_sites": int(len(y)), "block_km": round(split.info["block_km"], 2), "n_blocks": split.info["n_blocks"],
           "variogram_range_km": round(split.info["variogram"]["range_km"], 2), "r2_ln_ece": r2}
    if "ece_pixel_dsm" in s:  # synthetic worlds: how much of a label its own pixel's truth explains
        d = y - np.log(s["ece_pixel_dsm"].to_numpy(float))
        out["label_vs_pixel_r2"] = round(float(1 - (d**2).sum() / ((y - y.mean()) ** 2).sum()), 3)
    return out


def _scene_pixels(world, sid: str, n: int, rng) -> dict:
    """Up to ``n`` clear land pixels of one scene (no quality layer flags them, every model band valid): log
    reflectance, the 8 covariates, the true ECe, the column (for the west/east split)."""
    from pathlib import Path

    import rasterio
    from pyproj import Transformer

    from deepsalt.config import QUALITY_LAYERS
    from deepsalt.data.covariates import sample_covariates
    from deepsalt.spectra.bands import EXCLUDED_BANDS

    d = Path(world) / "scenes" / sid
    with rasterio.open(Path(world) / "truth" / f"{sid}_ECE.TIF") as t:
        truth = t.read(1)
    ok = np.isfinite(truth)
    for q in QUALITY_LAYERS.values():
        with rasterio.open(d / f"{sid}-QL_QUALITY_{q.suffix}_COG.TIF") as m:
            ok &= ~np.isin(m.read(1), q.masked)
    rows, cols = np.nonzero(ok)
    pick = rng.permutation(len(rows))[:n]
    rows, cols = rows[pick], cols[pick]
    with rasterio.open(d / f"{sid}-SPECTRAL_IMAGE_COG.TIF") as src:
        keep = [b for b in range(1, src.count + 1) if b not in EXCLUDED_BANDS]
        dn = src.read(keep)[:, rows, cols].T.astype(float)
        x, y = rasterio.transform.xy(src.transform, rows, cols)
        lon, lat = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True).transform(np.asarray(x), np.asarray(y))
    good = (dn > -32768).all(1)
    cov = sample_covariates(Path(world) / "covariates", np.asarray(lon), np.asarray(lat))
    good &= np.isfinite(cov).all(1)
    return {"spectra": np.log(np.clip(dn[good] * 1e-4, 1e-3, None)), "covariates": cov[good].astype(float),
            "ece": truth[rows, cols][good].astype(float), "col": cols[good], "width": truth.shape[1]}


def pixel_ceiling(world, seed: int = 0, per_scene: int = 4000, thresholds=(4.0, 8.0)) -> dict:
    """What the world's inputs carry about ECe at pixel level: models fitted to the true ECe of clear pixels of the
    seen scenes, from the spectra (ridge on log reflectance), the covariates and both (gradient boosting), under a
    within-scene spatial split (west half of every scene trains, east half tests) and under a random split of the
    same pixels, scored per scene and pooled as `deepsalt score` scores a map (R2 of ln ECe, Spearman, and per
    threshold recall, precision and F1 of the value above it and the within-scene AUC)."""
    import json
    from pathlib import Path

    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from deepsalt.mapping.score import _pooled, _skill

    rng = np.random.default_rng(seed)
    scenes = [s["id"] for s in json.loads((Path(world) / "world.json").read_text())["scenes"] if s.get("region", "seen") == "seen"]
    px = {sid: _scene_pixels(world, sid, per_scene, rng) for sid in scenes}
    models = {"spectra": ("spectra", lambda: make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15)))),
              "covariates": ("covariates", lambda: HistGradientBoostingRegressor(random_state=seed)),
              "spectra+covariates": ("both", lambda: HistGradientBoostingRegressor(random_state=seed))}
    out: dict = {"n_pixels": {sid: int(len(p["ece"])) for sid, p in px.items()}, "splits": {}}
    for split in ("within_scene_spatial", "random"):
        masks = {}
        for sid, p in px.items():
            test = p["col"] >= p["width"] // 2 if split == "within_scene_spatial" else rng.random(len(p["ece"])) < 0.5
            masks[sid] = test
        out["splits"][split] = {}
        for name, (inp, make) in models.items():
            def feats(p):
                return p["spectra"] if inp == "spectra" else p["covariates"] if inp == "covariates" else np.column_stack([p["spectra"], p["covariates"]])
            xtr = np.concatenate([feats(p)[~masks[s]] for s, p in px.items()])
            ytr = np.concatenate([np.log(p["ece"][~masks[s]]) for s, p in px.items()])
            model = make().fit(xtr, ytr)
            parts = []
            for sid, p in px.items():
                m = masks[sid]
                y, pred = p["ece"][m], np.exp(model.predict(feats(p)[m]))
                parts.append({"y": y, "pred": pred, "calls": None, "skill": _skill(y, pred, None, thresholds)})
            out["splits"][split][name] = {"pooled": _pooled(parts, thresholds),
                                          "scenes": {sid: q["skill"] for sid, q in zip(px, parts)}}
    return out
