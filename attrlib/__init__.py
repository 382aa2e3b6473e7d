"""attrlib: attribution-preserving network compression (Park et al., NeurIPS 2020), reproducible."""

__version__ = "0.1.0"
