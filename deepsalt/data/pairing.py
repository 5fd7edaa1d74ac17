"""Pairing lab samples with satellite sites: BallTree, haversine on radians, mutual nearest neighbours."""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import BallTree

from deepsalt.data.lab import check_lat_lon

EARTH_RADIUS_KM = 6371.0088


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km between points given in decimal degrees."""
    p1, p2, l1, l2 = map(np.radians, (lat1, lat2, lon1, lon2))
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin((l2 - l1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(a))


def mutual_pairs(lab_lat, lab_lon, sat_lat, sat_lon, max_km: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs (lab_i, sat_j, distance_km): j is i's nearest site, i is j's nearest lab sample, within max_km.

    Inputs are decimal degrees; they are converted to radians here, the only unit BallTree's haversine takes.
    """
    check_lat_lon(lab_lat, lab_lon, "lab samples")
    check_lat_lon(sat_lat, sat_lon, "satellite samples")
    lab = np.radians(np.column_stack([lab_lat, lab_lon]))
    sat = np.radians(np.column_stack([sat_lat, sat_lon]))
    d_ls, j = BallTree(sat, metric="haversine").query(lab, k=1)
    _, i_back = BallTree(lab, metric="haversine").query(sat, k=1)
    j, i_back = j[:, 0], i_back[:, 0]
    dist_km = d_ls[:, 0] * EARTH_RADIUS_KM
    lab_idx = np.arange(len(lab))
    keep = (i_back[j] == lab_idx) & (dist_km <= max_km)
    return lab_idx[keep], j[keep], dist_km[keep]
