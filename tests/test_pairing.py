import numpy as np
import pytest

from deepsalt.data.pairing import haversine_km, mutual_pairs
from deepsalt.errors import DeepSaltInputError


def test_0013_deg_longitude_at_40_6N_is_about_1_10_km():
    d = haversine_km(40.6, -111.0, 40.6, -111.013)
    assert d == pytest.approx(1.097, abs=0.01)


def test_cutoff_is_in_km_on_radians_not_degrees():
    # DESIGN defect 3: haversine fed degrees makes the 1 km cut-off meaningless. 0.013 deg (1.10 km) must
    # be refused and 0.010 deg (0.84 km) accepted.
    lab_lat, lab_lon = np.array([40.6, 40.6]), np.array([-111.0, -110.0])
    sat_lat, sat_lon = np.array([40.6, 40.6]), np.array([-111.013, -110.010])
    li, si, d = mutual_pairs(lab_lat, lab_lon, sat_lat, sat_lon, max_km=1.0)
    assert li.tolist() == [1] and si.tolist() == [1]
    assert d[0] == pytest.approx(haversine_km(40.6, -110.0, 40.6, -110.01), rel=1e-6)


def test_mutual_nearest_neighbours_only():
    # two lab samples near one site: only the nearer one is paired with it
    li, si, _ = mutual_pairs(np.array([40.0, 40.0]), np.array([-110.0, -110.004]), np.array([40.0]), np.array([-110.001]))
    assert li.tolist() == [0] and si.tolist() == [0]


def test_out_of_range_coordinates_are_refused():
    with pytest.raises(DeepSaltInputError, match="latitude/longitude out of range"):
        mutual_pairs(np.array([95.0]), np.array([10.0]), np.array([40.0]), np.array([10.0]))
