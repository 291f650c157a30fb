"""Where the shipped models are found: SONOGRADE_MODELS, a checkout's models/, an installation's data."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import model_files


def test_checkout_models_are_found_first() -> None:
    assert (model_files.CHECKOUT_MODELS_DIR / "g_cnn.onnx").is_file()
    assert model_files.default_models_dir() == model_files.CHECKOUT_MODELS_DIR


def test_environment_variable_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(model_files.MODELS_ENV, str(tmp_path))
    assert model_files.default_models_dir() == tmp_path


def test_installed_data_files_are_found_without_a_checkout(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A wheel install has no models/ beside the packages: the data prefix's share/sonograde/models."""
    installed = tmp_path / "prefix" / model_files.INSTALLED_SUBDIR
    installed.mkdir(parents=True)
    (installed / model_files.SHIPPED_MARKER).write_bytes(b"onnx")
    monkeypatch.delenv(model_files.MODELS_ENV, raising=False)
    monkeypatch.setattr(model_files, "CHECKOUT_MODELS_DIR", tmp_path / "no-checkout" / "models")
    monkeypatch.setattr(model_files.sys, "prefix", str(tmp_path / "prefix"))
    assert model_files.default_models_dir() == installed


def test_pyproject_installs_every_shipped_model() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["data-files"][model_files.INSTALLED_SUBDIR.as_posix()]
    shipped = {p.name for p in (root / "models").iterdir() if p.is_file()}
    covered = {p.name for pattern in patterns for p in root.glob(pattern)}
    assert shipped == covered
