"""Continental mapping: output grid, tile plan, Ray Data pipeline, Zarr cube, scoring and quicklooks."""
