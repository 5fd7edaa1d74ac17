"""Spatially correlated soil and climate fields, and the ECe they imply.

Every field is a Gaussian random field built from random Fourier features (an approximation of a
squared-exponential covariance), evaluated at any (lon, lat): the lab samples, the satellite sites,
the scene pixels and the covariate grid all sample ONE continuous world, so they agree where they meet.

Units: clay/sand/CaCO3/gypsum/OM/Fe in mass %, moisture as volumetric fraction, temperatures in deg C,
precipitation in mm per month, ECe in dS/m (saturated-paste extract, 0-12 cm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Field name -> [(length scale km, weight)]. Scales chosen so that a 30 m pixel varies within a few km
# (what a soil surveyor sees) while climate varies over tens of km.
FIELD_SCALES: dict[str, list[tuple[float, float]]] = {
    "elev": [(25.0, 1.0), (6.0, 0.4)],
    "precip": [(40.0, 1.0), (8.0, 0.3)],
    "dtr": [(30.0, 1.0)],
    "tex1": [(6.0, 1.0), (1.0, 0.5)],
    "tex2": [(4.0, 1.0), (0.6, 0.4)],
    "carb": [(5.0, 1.0), (0.8, 0.5)],
    "gyp": [(3.0, 1.0), (0.5, 0.5)],
    "om": [(3.0, 1.0), (0.5, 0.5)],
    "fe": [(8.0, 1.0), (1.0, 0.4)],
    "sulf": [(5.0, 1.0)],
    "moist": [(1.5, 1.0), (0.3, 0.5)],
    "veg": [(1.0, 1.0), (0.25, 0.6)],
    "npv": [(0.8, 1.0)],
    "crustocc": [(0.6, 1.0), (0.2, 0.5)],
    "hidden": [(1.2, 1.0), (0.4, 0.4)],
    "drain": [(2.0, 1.0), (0.5, 0.5)],
    "resid": [(0.8, 1.0), (0.25, 0.6)],
    # field-scale variation (irrigation units, micro-relief, leaching patterns): 30-150 m
    "short": [(0.08, 1.0)],
    # errors of the covariate products: spatially correlated (a product's error follows its sparse inputs)
    "err_sand": [(15.0, 1.0), (3.0, 0.5)],
    "err_clay": [(15.0, 1.0), (3.0, 0.5)],
    "err_temp": [(30.0, 1.0), (5.0, 0.5)],
    "err_precip": [(30.0, 1.0), (5.0, 0.5)],
    # where the second epoch's salinity changed (WorldConfig.second_epoch): drawn last, so every field above is the
    # same whether a world has a second epoch or not
    "change": [(1.0, 1.0), (0.3, 0.3)],
}
#: the second epoch's known changes: where the "change" field exceeds CHANGE_AT, ECe rose CHANGE_UP-fold
#: (salinisation: a rising water table, irrigation return flow); below -CHANGE_AT it fell CHANGE_DOWN-fold
#: (reclamation: leaching, drainage); elsewhere it is the same soil, seen again
CHANGE_AT, CHANGE_UP, CHANGE_DOWN = 1.3, 6.0, 4.0


def ece_change(fields: "RandomFields", lon, lat, grid: bool = False) -> np.ndarray:
    """The second epoch's change class at points or on a raster: +1 salinised, -1 reclaimed, 0 unchanged (int8)."""
    f = _field_fn(fields, lon, lat, grid)("change")
    return np.where(f > CHANGE_AT, 1, np.where(f < -CHANGE_AT, -1, 0)).astype(np.int8)
N_FEATURES = 64
LON0, LAT0 = -110.0, 39.0
#: Longitude west of which the held-out "Great Basin" region's shifted climate and soils apply.
UNSEEN_LON = -111.0


class RandomFields:
    """Seeded multi-scale random fields, each with zero mean and unit variance."""

    def __init__(self, seed: int):
        rng = np.random.default_rng([seed, 1])
        self._params = {}
        for name, scales in FIELD_SCALES.items():
            comps = []
            for length, weight in scales:
                k = rng.normal(0.0, 1.0 / length, size=(N_FEATURES, 2))
                phi = rng.uniform(0, 2 * np.pi, N_FEATURES)
                comps.append((k, phi, weight))
            norm = np.sqrt(sum(w**2 for _, _, w in comps))
            self._params[name] = [(k, p, w / norm) for k, p, w in comps]

    @staticmethod
    def _km(lon, lat):
        x = (np.asarray(lon, float) - LON0) * 111.32 * np.cos(np.radians(LAT0))
        y = (np.asarray(lat, float) - LAT0) * 110.57
        return x, y

    def __call__(self, name: str, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """The field at scattered points (any shape)."""
        x, y = self._km(lon, lat)
        out = np.zeros(np.broadcast(x, y).shape)
        for k, phi, w in self._params[name]:
            arg = x[..., None] * k[:, 0] + y[..., None] * k[:, 1] + phi
            out += w * np.sqrt(2.0 / N_FEATURES) * np.cos(arg).sum(-1)
        return out

    def grid(self, name: str, lon: np.ndarray, lat: np.ndarray, block: int = 64) -> np.ndarray:
        """The field on a raster ``(rows, cols)``.

        Within a block whose km coordinates are affine in (row, col), the phase of each Fourier feature is
        separable in row and col, so the sum over features is a matrix product instead of rows x cols x features
        cosines: Re(e^{ia} e^{ib}) = cos a cos b - sin a sin b, two real products. A lon/lat raster (the covariate
        products) is one such block, exactly; a 30 m UTM scene is evaluated in 64-px blocks, each of which
        deviates from affine by well under a metre.
        """
        lon, lat = np.asarray(lon, float), np.asarray(lat, float)
        if lon.ndim == 2 and (lon == lon[:1]).all() and (lat == lat[:, :1]).all():
            x, y = self._km(lon[0], lat[:, 0])
            out = np.empty(lon.shape)
            for r0 in range(0, out.shape[0], 512):  # in row bands: a few temporaries of 512 x cols, not of the raster
                out[r0:r0 + 512] = self._separable(name, y[r0:r0 + 512, None], 0.0, x[:, None], 0.0)
            return out
        out = np.empty(lon.shape)
        for r0 in range(0, out.shape[0], block):
            for c0 in range(0, out.shape[1], block):
                sl = np.s_[r0:r0 + block, c0:c0 + block]
                x, y = self._km(lon[sl], lat[sl])
                nr, nc = x.shape
                rows, cols = np.arange(nr)[:, None], np.arange(nc)[:, None]
                # per row: the block's origin plus the row's step; per col: the col's step
                xr = x[0, 0] + rows * (x[-1, 0] - x[0, 0]) / max(nr - 1, 1)
                yr = y[0, 0] + rows * (y[-1, 0] - y[0, 0]) / max(nr - 1, 1)
                xc = cols * (x[0, -1] - x[0, 0]) / max(nc - 1, 1)
                yc = cols * (y[0, -1] - y[0, 0]) / max(nc - 1, 1)
                out[sl] = self._separable(name, yr, xr, xc, yc)
        return out

    def _separable(self, name: str, y_r, x_r, x_c, y_c) -> np.ndarray:
        """sum_f w cos(phase_r + phase_c) with phase_r = k.(x_r, y_r) + phi per row and phase_c = k.(x_c, y_c) per col."""
        out = 0.0
        for k, phi, w in self._params[name]:
            a = x_r * k[:, 0] + y_r * k[:, 1] + phi  # (rows, K)
            b = x_c * k[:, 0] + y_c * k[:, 1]  # (cols, K)
            out = out + w * np.sqrt(2.0 / N_FEATURES) * (np.cos(a) @ np.cos(b).T - np.sin(a) @ np.sin(b).T)
        return out


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class SoilPhysics:
    """The documented physical parameters of the world (recorded in world.json)."""

    lapse_rate_c_per_km: float = 6.5
    unseen_warming_c: float = 2.5
    unseen_precip_factor: float = 0.65
    unseen_sand_shift: float = 15.0
    unseen_gypsum_shift: float = 3.0
    #: log-ECe model: ln ECe = ln(ece_ref) + a_arid*(-ln AI - 1.6) + a_clay*(clay-25) + a_drain*poor + a_hidden*h + s*resid
    ece_ref: float = 0.8
    a_arid: float = 1.1
    a_clay: float = 0.025
    a_drain: float = 0.9
    a_hidden: float = 1.6
    resid_sd: float = 0.55
    ece_max: float = 76.0
    #: soluble salt (g/kg) = tds_per_ec * ECe * SP/100; 0.64 g/L per dS/m (USSL Handbook 60).
    tds_per_ec: float = 0.64
    #: ECe measurement error of the lab (saturated-paste extract, conductivity cell): CV of repeated analyses
    lab_ece_cv: float = 0.05
    #: field-scale variation of ln ECe at 30-150 m (the "short" field) beside the smooth fields: pixels differ
    #: from their neighbours as irrigated fields and micro-relief do
    short_sd: float = 0.3
    #: point versus pixel: a soil core (a few cm) differs from the 30 m pixel's mean by this sd of ln ECe
    #: (within-field CVs of ECe of 30-60 % are common in salt-affected fields)
    point_sd: float = 0.3
    #: covariate products, each at its real resolution and with a spatially correlated error of this sd:
    #: soil texture as SoilGrids 2.0 (250 m; Poggio et al. 2021 report cross-validated errors of about 10 % for
    #: sand and 7-8 % for clay at 0-5 cm); climate as WorldClim 2 (30 arc-seconds, ~1 km; Fick & Hijmans 2017
    #: report errors of tenths of a degree to ~1 deg C for temperature and 10-20 % for precipitation)
    soil_product_deg: float = 1 / 400
    climate_product_deg: float = 1 / 120
    sand_err_sd: float = 10.0
    clay_err_sd: float = 7.0
    temp_err_sd: float = 0.8
    precip_err_cv: float = 0.15
    #: surface salt crust: none below crust_onset_dsm, full cover at onset + crust_full_dsm (where it occurs)
    crust_onset_dsm: float = 4.0
    crust_full_dsm: float = 60.0
    gypsum_per_ece: float = 0.04
    #: graded salt expression below any crust, per unit of ln(1 + soluble salt in g/kg) (0.2 at 1 dS/m, 0.6 at
    #: 4, 1.5 at 16): salt-affected soils reflect more in the VIS-NIR than non-saline ones (Duan et al. 2016, Sci.
    #: Cold Arid Reg. 8(6) 507-515), and their spectral features deepen with the salt concentration from low
    #: levels up (Remote Sens. 2025, 17(14), 2486: EnMAP, early salinisation). Zero in both gives the world before
    #: 2026-12-05, where only a patchy crust above 4 dS/m showed salt. Relative VNIR brightening; optical depth of
    #: the hydrated-salt / hygroscopic-water bands at 1940 nm.
    salt_brightening: float = 0.04
    salt_band_depth: float = 0.05


def _texture(f, w, phys: SoilPhysics):
    clay = np.clip(22.0 + 9.0 * f("tex1"), 3.0, 60.0)
    sand = np.clip(45.0 - 0.8 * (clay - 22.0) + 10.0 * f("tex2") + w * phys.unseen_sand_shift, 5.0, 97.0 - clay)
    return clay, sand


def _field_fn(fields: RandomFields, lon, lat, grid: bool):
    return (lambda n: fields.grid(n, lon, lat)) if grid else (lambda n: fields(n, lon, lat))  # noqa: E731


def texture_product(fields: RandomFields, lon, lat, phys: SoilPhysics = SoilPhysics(), grid: bool = False):
    """(sand, clay) % as a soil map product reports them: the truth plus the product's correlated error."""
    f = _field_fn(fields, lon, lat, grid)
    clay, sand = _texture(f, _sig((UNSEEN_LON - np.asarray(lon, float)) / 0.3), phys)
    clay = np.clip(clay + phys.clay_err_sd * f("err_clay"), 1.0, 70.0)
    return np.clip(sand + phys.sand_err_sd * f("err_sand"), 1.0, 99.0 - clay), clay


def climate_product(fields: RandomFields, lon, lat, phys: SoilPhysics = SoilPhysics(), grid: bool = False) -> dict:
    """tmin/tmax/tavg (deg C) and pmin/pmax/pavg (mm) as a climate product reports them: truth plus its error."""
    s = soil_at(fields, lon, lat, phys, grid=grid)
    f = _field_fn(fields, lon, lat, grid)
    dt, pf = phys.temp_err_sd * f("err_temp"), np.exp(phys.precip_err_cv * f("err_precip"))
    return {**{k: s[k] + dt for k in ("tmin", "tmax", "tavg")}, **{k: s[k] * pf for k in ("pmin", "pmax", "pavg")}}


def soil_at(fields: RandomFields, lon, lat, phys: SoilPhysics = SoilPhysics(), grid: bool = False,
            ln_ece_offset=0.0) -> dict[str, np.ndarray]:
    """Soil, climate and ECe at points, or on a 2-D raster with ``grid=True``. Arrays shaped like ``lon``.
    ``ln_ece_offset``: added to ln ECe before everything that depends on it (a soil core's deviation from its
    pixel, so that its spectrum shows its own salinity)."""
    f = _field_fn(fields, lon, lat, grid)
    lon, lat = np.asarray(lon, float), np.asarray(lat, float)
    w = _sig((UNSEEN_LON - lon) / 0.3)  # 1 in the held-out region, 0 in the seen one
    elev_km = np.clip(1.5 + 0.35 * f("elev"), 0.6, 3.2)
    tavg = 14.5 - 0.45 * (lat - 30.0) - phys.lapse_rate_c_per_km * (elev_km - 1.5) + w * phys.unseen_warming_c
    dtr = 14.0 + 2.0 * f("dtr")
    tmax = tavg + 11.0 + 0.5 * dtr
    tmin = tavg - 12.0 - 0.3 * dtr
    pavg = np.clip((22.0 + 7.0 * f("precip") + 10.0 * (elev_km - 1.5)) * (1 - w * (1 - phys.unseen_precip_factor)), 3.0, None)
    pmin, pmax = 0.3 * pavg, 2.2 * pavg
    # Hargreaves PET with a mean extraterrestrial radiation of 15 mm/day equivalent.
    pet = 365 * 0.0023 * 15.0 * (tavg + 17.8) * np.sqrt(np.clip(dtr, 1, None))
    ai = np.clip(12 * pavg / pet, 0.02, 3.0)
    arid = -np.log(ai) - 1.6

    clay, sand = _texture(f, w, phys)
    hidden = _sig((f("hidden") - 0.8) / 0.25)  # shallow saline groundwater / irrigation return flow: no covariate shows it
    poor_drain = _sig((f("drain") + 0.04 * (clay - 25.0)) / 0.5)
    ln_ece = (np.log(phys.ece_ref) + phys.a_arid * arid + phys.a_clay * (clay - 25.0) + phys.a_drain * poor_drain
              + phys.a_hidden * hidden + phys.resid_sd * f("resid") + phys.short_sd * f("short") + ln_ece_offset)
    ece = np.clip(np.exp(ln_ece), 0.05, phys.ece_max)

    om = np.clip(1.2 + 0.4 * f("om") - 0.5 * arid + 0.6 * hidden, 0.2, 6.0)
    caco3 = np.clip(6.0 + 4.0 * arid + 4.0 * f("carb"), 0.0, 40.0)
    gypsum = np.clip(1.0 + 2.5 * f("gyp") + phys.gypsum_per_ece * ece + w * phys.unseen_gypsum_shift, 0.0, 30.0)
    fe = np.clip(2.0 + 0.8 * f("fe") + 0.04 * clay, 0.3, 8.0)
    sp = 18.0 + 0.6 * clay + 4.0 * om  # saturation percentage
    salt_gkg = phys.tds_per_ec * ece * sp / 100.0
    sulfate_frac = np.clip(0.5 + 0.2 * f("sulf"), 0.1, 0.9)
    moisture = np.clip(0.06 + 0.04 * f("moist") + 0.15 * hidden + 0.002 * (pavg - 22.0), 0.01, 0.40)
    veg = np.clip((0.2 + 0.18 * f("veg") + 0.35 * hidden + 0.004 * (pavg - 22.0)) * np.exp(-ece / 40.0), 0.0, 0.9)
    npv = np.clip(0.12 + 0.10 * f("npv"), 0.0, 0.4)
    # Surface crusts form only where the surface stayed undisturbed and dry since the last wetting
    # (tillage and rain dissolve them): a patchy occurrence field, so ECe shows at the surface only in part.
    crust_occurs = _sig(f("crustocc") / 0.3)
    salt_ln = np.log1p(salt_gkg)
    crust = np.clip((ece - phys.crust_onset_dsm) / phys.crust_full_dsm, 0.0, 1.0) ** 0.8 * crust_occurs * np.clip(1.0 - 2.5 * moisture, 0.0, 1.0)
    return dict(
        elev_km=elev_km, tavg=tavg, tmin=tmin, tmax=tmax, pavg=pavg, pmin=pmin, pmax=pmax, aridity_index=ai,
        clay=clay, sand=sand, silt=100.0 - clay - sand, hidden=hidden, poor_drain=poor_drain, ece=ece, om=om,
        caco3=caco3, gypsum=gypsum, fe=fe, sp=sp, salt_gkg=salt_gkg, sulfate_frac=sulfate_frac,
        moisture=moisture, veg=veg, npv=npv, crust=crust, unseen_weight=w,
        salt_bright=phys.salt_brightening * salt_ln, salt_bands=phys.salt_band_depth * salt_ln,
    )


def koppen(tavg, tmin_month, pavg) -> np.ndarray:
    """Köppen class from mean temperature, coldest-month minimum and mean monthly precipitation."""
    p_annual = 12 * np.asarray(pavg)
    thresh = 20 * np.asarray(tavg) + 140
    out = np.where(np.asarray(tmin_month) < -3, "Dfb", "Csb").astype(object)
    arid = p_annual < thresh
    desert = p_annual < 0.5 * thresh
    hot = np.asarray(tavg) >= 18
    out = np.where(arid & desert & hot, "BWh", out)
    out = np.where(arid & desert & ~hot, "BWk", out)
    out = np.where(arid & ~desert & hot, "BSh", out)
    out = np.where(arid & ~desert & ~hot, "BSk", out)
    return out.astype(str)


def usda_texture(sand, clay) -> np.ndarray:
    """USDA texture class from sand and clay %, by the texture-triangle boundaries."""
    sand, clay = np.asarray(sand, float), np.asarray(clay, float)
    silt = 100 - sand - clay
    rules = [
        ("sand", silt + 1.5 * clay < 15),
        ("loamy sand", (silt + 1.5 * clay >= 15) & (silt + 2 * clay < 30)),
        ("sandy loam", ((clay >= 7) & (clay < 20) & (sand > 52) & (silt + 2 * clay >= 30)) | ((clay < 7) & (silt < 50) & (silt + 2 * clay >= 30))),
        ("loam", (clay >= 7) & (clay < 27) & (silt >= 28) & (silt < 50) & (sand <= 52)),
        ("silt loam", ((silt >= 50) & (clay >= 12) & (clay < 27)) | ((silt >= 50) & (silt < 80) & (clay < 12))),
        ("silt", (silt >= 80) & (clay < 12)),
        ("sandy clay loam", (clay >= 20) & (clay < 35) & (silt < 28) & (sand > 45)),
        ("clay loam", (clay >= 27) & (clay < 40) & (sand > 20) & (sand <= 45)),
        ("silty clay loam", (clay >= 27) & (clay < 40) & (sand <= 20)),
        ("sandy clay", (clay >= 35) & (sand > 45)),
        ("silty clay", (clay >= 40) & (silt >= 40)),
        ("clay", (clay >= 40) & (sand <= 45) & (silt < 40)),
    ]
    out = np.full(sand.shape, "clay", dtype=object)
    for name, cond in reversed(rules):
        out = np.where(cond, name, out)
    return out.astype(str)
