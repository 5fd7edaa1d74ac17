"""Readers for lab tables, STAC/EnMAP scenes and covariate rasters; site pairing; the synthetic world."""
