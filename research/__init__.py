"""Research code beside the product: the paper's Table 3 experiment, its VGG16 / ResNet50 baselines and the
cross-validation drivers that chose the shipped recipe. Not installed with the package (pyproject.toml
installs capture, engine, refine, calibration and sonograde only); run from a source checkout's root, e.g.
``python -m research.table3 --help``. It imports the product like any user. Research use only, not for
diagnosis.
"""
