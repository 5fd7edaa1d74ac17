"""DeepSalt: soil salinity (ECe, dS/m) from EnMAP hyperspectral imagery, distilled from lab MIR spectra."""

__version__ = "0.1.0"


def open_cube(url: str, storage_options: dict | None = None, version=None):
    """The ECe cube at ``url`` as an ``xarray.Dataset``; ``version``: None (latest), a tag, a commit id or a date.

    See ``deepsalt.mapping.cube.open_cube``.
    """
    from deepsalt.mapping.cube import open_cube as _open_cube

    return _open_cube(url, storage_options, version)


def point(url: str, lon: float, lat: float, epoch: str | None = None, storage_options: dict | None = None, version=None) -> dict:
    """ECe, uncertainty and source scene at one lon/lat, per epoch. See ``deepsalt.mapping.cube.point``."""
    from deepsalt.mapping.cube import point as _point

    return _point(url, lon, lat, epoch, storage_options, version)
