"""Datasets: manifest folders (the ``../shared/data`` format) and the synthetic phantom."""
