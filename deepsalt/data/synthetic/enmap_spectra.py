"""EnMAP L2A surface reflectance from the same soils, with the confounders a satellite sees.

Physics, per pixel (all spectra band-integrated with the real EnMAP centres/FWHM first, then combined
in band space; exact for linear mixing, a close approximation for the exponential terms because EnMAP
bands are 6-12 nm wide against features 20-100 nm wide):

- dry soil: brightness (sand up, organic matter down) x convex continuum x absorptions:
  Fe oxide (870 nm, blue fall-off), clay Al-OH (2205 nm), carbonate (2340 nm), gypsum (1450/1490/1535,
  1750, 1940, 2215/2265 nm);
- salt in the soil: a graded brightening (strongest in the VNIR) and hydrated-salt / hygroscopic-water bands
  (1450, 1940 nm) that deepen with the salt content from low levels up (``SoilPhysics.salt_*``);
- salt crust: linear mixture with a bright, hydrated-salt crust (ECe > ~3 dS/m, dry surfaces only);
- moisture: Beer-Lambert darkening with water bands (970, 1200, 1450, 1940 nm);
- cover: linear mixture with green vegetation and dry litter (cellulose/lignin 1730, 2100, 2300 nm);
- atmosphere: multiplicative residuals of the water-vapour / O2 correction, per scene and per pixel;
- sensor: band-dependent SNR (VNIR ~ 400-500, SWIR ~ 150-200, falling at the range ends).
"""

from __future__ import annotations

import numpy as np

from deepsalt.spectra.bands import BandTable

WL = np.arange(400.0, 2501.0, 1.0)  # 1-nm grid the basis spectra are defined on


def _g(c, s):
    return np.exp(-0.5 * ((WL - c) / s) ** 2)


def _sig(x):
    return 1 / (1 + np.exp(-x))


def _basis_1nm() -> dict[str, np.ndarray]:
    continuum = 0.55 + 0.45 * (1 - np.exp(-(WL - 380) / 380)) - 0.15 * np.clip((WL - 1800) / 700, 0, None) ** 2
    veg = (0.04 + 0.06 * _g(550, 35) + 0.42 * _sig((WL - 715) / 14)) * (1 - 0.45 * _sig((WL - 1450) / 180))
    veg *= np.exp(-(0.25 * _g(970, 30) + 0.5 * _g(1200, 40) + 2.5 * _g(1450, 60) + 4 * _g(1940, 70) + 0.6 * _sig((WL - 2400) / 60)))
    npv = (0.10 + 0.28 * _sig((WL - 620) / 150)) * np.exp(-(0.28 * _g(2100, 40) + 0.1 * _g(1730, 20) + 0.1 * _g(2300, 30) + 0.4 * _g(1940, 50)))
    crust = 0.72 * np.exp(-(0.35 * _g(1450, 30) + 0.5 * _g(1940, 40) + 0.08 * _g(1200, 30) + 0.05 * _g(1750, 15)
                            + 0.3 * _sig((WL - 2350) / 60)))
    cloud = 0.62 * np.exp(-(0.2 * _g(1500, 60) + 0.35 * _g(2000, 80) + 0.05 * _g(1200, 40)))
    return dict(
        ln_continuum=np.log(continuum),
        fe=0.03 * _g(870, 80) + 0.06 * _sig((550 - WL) / 35),  # per % Fe2O3 (optical depth)
        clay=0.004 * _g(2205, 18) + 0.002 * _g(1410, 20) + 0.003 * _g(1910, 30),  # per % clay
        caco3=0.006 * _g(2340, 22) + 0.0015 * _g(2160, 15),  # per % CaCO3
        gypsum=0.02 * _g(1450, 15) + 0.015 * _g(1490, 12) + 0.012 * _g(1535, 12) + 0.012 * _g(1750, 12)
        + 0.02 * _g(1940, 25) + 0.008 * _g(2215, 12) + 0.008 * _g(2265, 12),  # per % gypsum
        om_vis=0.1 * _sig((700 - WL) / 80),  # per % OM, darkening strongest in the visible
        salt_bright=0.5 + 0.5 * _sig((1300 - WL) / 150),  # relative brightening: 1 in the VNIR, 0.5 in the SWIR
        salt_bands=0.6 * _g(1450, 35) + 1.0 * _g(1940, 45) + 0.15 * _g(1200, 30),  # per unit optical depth at 1940 nm
        water=1.2 + 1.5 * _g(970, 30) + 2.5 * _g(1200, 40) + 8 * _g(1450, 40) + 12 * _g(1940, 50) + 4 * _sig((WL - 2300) / 80),
        atm_scene=0.008 + 0.02 * _g(760, 5) + 0.03 * _g(940, 25) + 0.03 * _g(1130, 25) + 0.10 * _g(1400, 35)
        + 0.15 * _g(1870, 60) + 0.05 * _sig((WL - 2380) / 30),  # sd of the per-scene residual
        wv_profile=0.6 * _g(940, 25) + 0.6 * _g(1130, 25) + 1.0 * _g(1400, 35) + 1.0 * _g(1870, 60),
        veg=veg, npv=npv, crust=crust, cloud=cloud,
    )


def band_basis(bands: BandTable) -> dict[str, np.ndarray]:
    """Basis spectra integrated over each band's Gaussian response, each ``(n_bands,)``."""
    srf = bands.srf(WL)
    return {k: srf @ v for k, v in _basis_1nm().items()}


def snr(bands: BandTable) -> np.ndarray:
    """Band SNR at a 30 % reflectance target: VNIR ~ 500 at 500 nm, SWIR ~ 180 at 2200 nm, lower at the ends."""
    c = bands.centers_nm
    vnir = 500 * np.exp(-0.5 * ((c - 550) / 260) ** 2) + 60
    swir = 200 * np.exp(-0.5 * ((c - 1650) / 600) ** 2) + 40
    return np.where(c < 950, vnir, swir)


def render(soil: dict[str, np.ndarray], basis: dict[str, np.ndarray], snr_b: np.ndarray, atm_scene: np.ndarray,
           wv_anom: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Surface reflectance ``(n_pixels, n_bands)`` float32 for flattened soil arrays of length n_pixels."""
    col = lambda k: np.asarray(soil[k], float)[:, None]  # noqa: E731
    bright = np.clip(0.30 + 0.0025 * (col("sand") - 45) - 0.05 * np.log(col("om") / 1.2), 0.08, 0.6)
    ln_r = np.log(bright) + basis["ln_continuum"][None] - (
        col("fe") * basis["fe"] + col("clay") * basis["clay"] + col("caco3") * basis["caco3"]
        + col("gypsum") * basis["gypsum"] + col("om") * basis["om_vis"]) + col("salt_bright") * basis["salt_bright"] \
        - col("salt_bands") * basis["salt_bands"]
    dry = np.exp(ln_r)
    c = col("crust")
    surface = (1 - c) * dry + c * basis["crust"][None]
    wet = surface * np.exp(-col("moisture") * basis["water"][None])
    v, n = col("veg"), col("npv")
    refl = (1 - v - n) * wet + v * basis["veg"][None] + n * basis["npv"][None]
    refl *= (1 + atm_scene[None] + np.asarray(wv_anom, float)[:, None] * 0.05 * basis["wv_profile"][None])
    sigma = refl / snr_b[None] * np.sqrt(0.3 / np.clip(refl, 0.02, None)) + 0.0005
    refl += sigma * rng.standard_normal(refl.shape)
    return refl.astype(np.float32)
