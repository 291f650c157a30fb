"""Datasets: manifest folders (a manifest.csv of id,image,mask,...: docs/data.md) and the phantom."""
