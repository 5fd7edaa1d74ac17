"""DeepSalt: soil salinity (ECe, dS/m) from EnMAP hyperspectral imagery, distilled from lab MIR spectra."""

__version__ = "0.1.0"
