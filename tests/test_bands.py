import numpy as np

from conftest import SHARED_DATA
from deepsalt.spectra.bands import EXCLUDED_BANDS, enmap_bands
from importlib import resources


def test_packaged_band_table_is_the_shared_file_verbatim():
    packaged = resources.files("deepsalt.spectra").joinpath("enmap_l2a_bands.csv").read_bytes()
    assert packaged == (SHARED_DATA / "enmap_l2a_bands.csv").read_bytes()


def test_band_table_facts():
    b = enmap_bands()
    assert len(b) == 224
    assert b.centers_nm[0] == 418.416 and b.centers_nm[-1] > 2440
    gaps = [(b.centers_nm[i], b.centers_nm[i + 1]) for i in np.flatnonzero(np.diff(b.centers_nm) > 40)]
    assert gaps == [(1390.48, 1461.11), (1759.51, 1939.14)]
    mask = b.model_band_mask()
    assert mask.sum() == 218
    dropped = b.centers_nm[~mask]
    assert len(EXCLUDED_BANDS) == 6 and 1330 < dropped.min() and dropped.max() < 1391


def test_srf_rows_normalised_and_centred():
    b = enmap_bands()
    wl = np.arange(400.0, 2501.0)
    srf = b.srf(wl)
    np.testing.assert_allclose(srf.sum(1), 1, atol=1e-9)
    np.testing.assert_allclose(srf @ wl, b.centers_nm, atol=0.6)  # band 1 at 418 nm is clipped by the grid edge only slightly
