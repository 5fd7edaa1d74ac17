"""EnMAP L2A band table and spectral response functions.

The table is a verbatim copy of ``shared/data/enmap_l2a_bands.csv`` (DLR STAC ``eo:bands`` of the
spectral-image asset); ``tests/test_bands.py`` checks the copy is byte-identical to the shared file.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

#: 1-based band numbers the method drops: 1331-1390 nm, at the edge of the 1.4 µm water-vapour gap.
EXCLUDED_BANDS = (130, 131, 132, 133, 134, 135)


@dataclass(frozen=True)
class BandTable:
    """Names, centre wavelengths and FWHM (nm) of a sensor's bands, in file order."""

    names: tuple[str, ...]
    centers_nm: np.ndarray  # (n_bands,)
    fwhm_nm: np.ndarray  # (n_bands,)

    def __len__(self) -> int:
        return len(self.names)

    def to_eo_bands(self, gain=None, offset=None) -> list[dict]:
        """The STAC ``eo:bands`` list, as DLR writes it for the spectral-image asset (gain 0.0001 and offset 0 per
        band, DLR's L2A scaling, unless given)."""
        n = len(self.names)
        gain = [0.0001] * n if gain is None else [float(g) for g in gain]
        offset = [0] * n if offset is None else [float(o) if o else 0 for o in offset]
        return [
            {
                "name": name,
                "center_wavelength": float(c),
                "full_width_half_max": float(w),
                "enmap:gain_of_band": g,
                "enmap:offset_of_band": o,
            }
            for name, c, w, g, o in zip(self.names, self.centers_nm, self.fwhm_nm, gain, offset)
        ]

    @classmethod
    def from_eo_bands(cls, eo_bands: list[dict]) -> "BandTable":
        """Band table from an item's ``eo:bands`` (numbers may arrive as strings)."""
        return cls(
            names=tuple(str(b.get("name", i + 1)) for i, b in enumerate(eo_bands)),
            centers_nm=np.array([float(b["center_wavelength"]) for b in eo_bands]),
            fwhm_nm=np.array([float(b["full_width_half_max"]) for b in eo_bands]),
        )

    def model_band_mask(self, exclude=EXCLUDED_BANDS) -> np.ndarray:
        """Boolean mask of the bands the model uses: all but ``exclude`` (band names or numbers; default
        :data:`EXCLUDED_BANDS`, the method's)."""
        excluded = {str(b) for b in exclude}
        return np.array([n not in excluded for n in self.names])

    def srf(self, wavelengths_nm: np.ndarray) -> np.ndarray:
        """Gaussian spectral response matrix ``(n_bands, n_wavelengths)``, rows summing to 1."""
        sigma = self.fwhm_nm[:, None] / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        w = np.exp(-0.5 * ((wavelengths_nm[None, :] - self.centers_nm[:, None]) / sigma) ** 2)
        return w / w.sum(axis=1, keepdims=True)


@lru_cache(maxsize=1)
def enmap_bands() -> BandTable:
    """The 224 EnMAP L2A bands (sorted by wavelength: VNIR and SWIR interleave near 900-1000 nm)."""
    import pandas as pd  # here, not at the top: every Ray worker imports this module, few read the table

    with resources.files(__package__).joinpath("enmap_l2a_bands.csv").open() as f:
        df = pd.read_csv(f)
    return BandTable(
        names=tuple(str(b) for b in df["band"]),
        centers_nm=df["center_wavelength_nm"].to_numpy(float),
        fwhm_nm=df["fwhm_nm"].to_numpy(float),
    )


def select_bands(model_names, model_centers, names, centers, where: str) -> np.ndarray:
    """Positions of a model's bands in an input band list; refuses missing or shifted (> 1 nm) bands."""
    from deepsalt.errors import DeepSaltInputError

    pos = {str(n): i for i, n in enumerate(names)}
    missing = [n for n in model_names if n not in pos]
    if missing:
        raise DeepSaltInputError(where, f"{len(missing)} of the model's bands are missing (first: {missing[:3]})",
                                 "the scene's eo:bands must contain every band the model was trained on")
    idx = np.array([pos[n] for n in model_names])
    off = np.abs(np.asarray(centers, float)[idx] - np.asarray(model_centers, float))
    if off.max() > 1.0:
        raise DeepSaltInputError(where, f"band centres differ from the model's by up to {off.max():.1f} nm",
                                 "this model was trained for another sensor or band calibration")
    return idx
