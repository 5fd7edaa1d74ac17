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
