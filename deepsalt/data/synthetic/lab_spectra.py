"""Lab MIR absorbance spectra as mixtures of real mineral and organic absorption features.

Band centres (cm-1) are the textbook positions; widths are Gaussian sigmas (cm-1); intensities are
absorbance units for the reference abundance given per component. DRIFT-like absorbance of an
air-dried, ground 0-12 cm sample: a baseline plus the sum of components plus white noise (high SNR).
"""

from __future__ import annotations

import numpy as np

# component -> (reference abundance, [(centre cm-1, sigma cm-1, absorbance at the reference)])
MIR_COMPONENTS: dict[str, tuple[float, list[tuple[float, float, float]]]] = {
    # quartz Si-O stretch, overtone/combination bands, 798/779 doublet (per 60 % sand)
    "sand": (60.0, [(1870, 40, 0.25), (1990, 35, 0.22), (1160, 40, 1.2), (1080, 50, 1.4), (798, 12, 0.6),
                    (779, 12, 0.55), (695, 10, 0.3), (460, 30, 1.0)]),
    # kaolinite/smectite OH stretch (3695, 3620), Si-O (1030), Al-OH bend (915) (per 40 % clay)
    "clay": (40.0, [(3695, 12, 0.4), (3620, 15, 0.6), (3420, 150, 0.2), (1030, 60, 1.3), (915, 15, 0.5),
                    (535, 30, 0.7), (470, 25, 0.7)]),
    # calcite 2980/2875/2515 combinations, 1795, carbonate nu3 1430, nu2 875, nu4 712 (per 20 % CaCO3)
    "caco3": (20.0, [(2980, 25, 0.3), (2875, 25, 0.35), (2515, 20, 0.6), (1795, 12, 0.45), (1430, 70, 1.5),
                     (875, 10, 0.7), (712, 6, 0.35)]),
    # gypsum water stretch 3550/3405, bend 1685/1620, sulfate nu3 1145/1118, nu4 670/602 (per 15 %)
    "gypsum": (15.0, [(3550, 30, 0.6), (3405, 45, 0.6), (2240, 40, 0.2), (2130, 40, 0.2), (1685, 12, 0.35),
                      (1620, 12, 0.4), (1145, 25, 1.1), (1118, 25, 1.0), (670, 10, 0.4), (602, 10, 0.45)]),
    # soluble sulfate salts (thenardite/mirabilite-like): nu3 1130, nu1 990, nu4 640/618 (per 10 g/kg)
    "salt_sulfate": (10.0, [(1130, 35, 1.2), (990, 8, 0.15), (640, 10, 0.45), (618, 10, 0.5)]),
    # chloride salts are MIR-transparent but hold hygroscopic water: 3400 stretch, 1640 bend (per 10 g/kg)
    "salt_chloride": (10.0, [(3400, 160, 0.5), (1640, 30, 0.3)]),
    # organic matter aliphatic C-H 2925/2855, C=O 1720, aromatic C=C 1600, 1240 (per 3 % OM)
    "om": (3.0, [(2925, 25, 0.35), (2855, 18, 0.25), (1720, 25, 0.25), (1600, 40, 0.4), (1240, 50, 0.2)]),
    # iron oxides (hematite/goethite) lattice bands (per 5 % Fe2O3)
    "fe": (5.0, [(540, 40, 0.6), (460, 30, 0.5)]),
}
LAB_NOISE_SD = 0.004  # absorbance units; typical bench FTIR noise on a ~1-2 absorbance signal


def component_basis(wavenumbers: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Per-unit-abundance spectra ``(n_components, n_channels)``."""
    names, rows = [], []
    for name, (ref, bands) in MIR_COMPONENTS.items():
        row = np.zeros_like(wavenumbers, dtype=float)
        for c, s, a in bands:
            row += a * np.exp(-0.5 * ((wavenumbers - c) / s) ** 2)
        names.append(name)
        rows.append(row / ref)
    return names, np.array(rows)


def lab_spectra(soil: dict[str, np.ndarray], wavenumbers: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Absorbance ``(n_samples, n_channels)`` float32 for the soils in ``soil`` (see fields.soil_at)."""
    names, basis = component_basis(wavenumbers)
    abund = {
        "sand": soil["sand"], "clay": soil["clay"], "caco3": soil["caco3"], "gypsum": soil["gypsum"],
        "salt_sulfate": soil["salt_gkg"] * soil["sulfate_frac"],
        "salt_chloride": soil["salt_gkg"] * (1 - soil["sulfate_frac"]),
        "om": soil["om"], "fe": soil["fe"],
    }
    a = np.stack([abund[n] for n in names], axis=1)
    n = a.shape[0]
    # Baseline: offset and slope from particle size / packing, varying per sample as in real DRIFT scans.
    x = (wavenumbers - 400.0) / 3600.0
    offset = 0.25 + 0.05 * rng.standard_normal(n) + 0.002 * soil["clay"]
    slope = 0.15 + 0.05 * rng.standard_normal(n)
    spec = a @ basis + offset[:, None] + slope[:, None] * (1 - x)[None, :]
    spec += LAB_NOISE_SD * rng.standard_normal(spec.shape)
    return spec.astype(np.float32)
