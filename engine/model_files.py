"""Where the shipped models are: a checkout's ``models/``, the installed copy, or ``SONOGRADE_MODELS``.

``pip install .`` installs the shipped ONNX models and their model cards as data files under
``<prefix>/share/sonograde/models`` (``[tool.setuptools.data-files]`` in pyproject.toml), so an installed
package grades without a checkout. The order:

1. ``$SONOGRADE_MODELS`` when set (a folder with ``roi_cnn[.PRECISION].onnx`` and ``g_cnn[...]``);
2. the ``models/`` folder beside the packages (a checkout or an editable install);
3. ``share/sonograde/models`` under the installation's data prefix (a wheel install).

Every command that loads models also takes ``--models DIR``, which wins over all three.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

MODELS_ENV = "SONOGRADE_MODELS"
SHIPPED_MARKER = "roi_cnn.onnx"  # a folder holding this file is a models folder
CHECKOUT_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
INSTALLED_SUBDIR = Path("share") / "sonograde" / "models"


def installed_models_dirs() -> list[Path]:
    """Where an installation puts the models' data files (the data prefix of this interpreter's scheme,
    then ``sys.prefix``)."""
    roots = [sysconfig.get_path("data"), sys.prefix]
    user_data = sysconfig.get_path("data", f"{os.name}_user") if os.name == "posix" else None
    if user_data:
        roots.append(user_data)
    seen: list[Path] = []
    for root in roots:
        path = Path(root) / INSTALLED_SUBDIR
        if path not in seen:
            seen.append(path)
    return seen


def default_models_dir() -> Path:
    """The models folder used when no ``--models DIR`` is given (see the module docstring for the order).

    When none of the places holds models, the checkout's path is returned, so the error that follows
    names a concrete file.
    """
    override = os.environ.get(MODELS_ENV)
    if override:
        return Path(override).expanduser()
    if (CHECKOUT_MODELS_DIR / SHIPPED_MARKER).is_file():
        return CHECKOUT_MODELS_DIR
    for path in installed_models_dirs():
        if (path / SHIPPED_MARKER).is_file():
            return path
    return CHECKOUT_MODELS_DIR


DEFAULT_MODELS_DIR = default_models_dir()
