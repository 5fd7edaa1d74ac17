"""Band tables and spectral grids (EnMAP VNIR-SWIR, lab MIR)."""
