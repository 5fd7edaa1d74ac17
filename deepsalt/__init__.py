"""DeepSalt: soil salinity (ECe, dS/m) from EnMAP hyperspectral imagery, distilled from lab MIR spectra."""

__version__ = "0.1.0"


def open_cube(url: str, storage_options: dict | None = None, version=None):
    """The ECe cube at ``url`` as an ``xarray.Dataset``; ``version``: None (latest), a tag, a commit id or a date.

    See ``deepsalt.mapping.cube.open_cube``.
    """
    from deepsalt.mapping.cube import open_cube as _open_cube

    return _open_cube(url, storage_options, version)
