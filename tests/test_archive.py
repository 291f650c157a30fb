"""Archive grading (`sonograde grade SRC --table`): sources, rows, error rows, resume, the local process
pool and a real local Ray instance giving the same rows as grading in one process."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from dicom_samples import CT_IMAGE_STORAGE, ultrasound_dataset

from engine.backends.dev_models import make_grader_model, make_roi_model, synthetic_frame
from sonograde import RESEARCH_USE_ONLY
from sonograde.archive.local_engine import LocalPool, grade_in_process
from sonograde.archive.rows import COLUMN_NAMES
from sonograde.archive.runner import run_archive
from sonograde.archive.sources import discover
from sonograde.archive.table import TableError, TableWriter, read_table
from sonograde.archive.worker import GradeSettings
from sonograde.commands import grade as grade_command

PROBABILITIES = [name for name in COLUMN_NAMES if name.startswith("p_")]


@pytest.fixture
def settings(tmp_path) -> GradeSettings:
    directory = tmp_path / "models"
    directory.mkdir()
    make_roi_model(directory / "roi_cnn.onnx")
    make_grader_model(directory / "g_cnn.onnx", size=64, channels=2)
    return GradeSettings(models_dir=str(directory))


@pytest.fixture
def archive(tmp_path, rng) -> dict:
    """An archive folder: images in nested folders, a manifest folder, a 3-frame DICOM without a suffix,
    a DICOMDIR (not an image), a blank image and a CT (not gradeable), a corrupt JPEG and a truncated
    DICOM."""
    root = tmp_path / "archive"
    (root / "2024" / "03").mkdir(parents=True)
    (root / "dataset" / "images").mkdir(parents=True)
    for name, (h, w) in {"2024/a.png": (240, 320), "2024/03/b.jpg": (300, 260), "c.bmp": (200, 200)}.items():
        cv2.imwrite(str(root / name), synthetic_frame(rng, h, w)[0])
    cv2.imwrite(str(root / "blank.png"), np.full((150, 150), 0, np.uint8))
    for n in (1, 2):
        cv2.imwrite(str(root / "dataset" / "images" / f"m{n}.png"), synthetic_frame(rng, 220, 280)[0])
        cv2.imwrite(str(root / "dataset" / "images" / f"unlisted{n}.png"), synthetic_frame(rng, 120, 120)[0])
    (root / "dataset" / "manifest.csv").write_text(
        "id,image,mask,pixel_size_mm\ncase-1,images/m1.png,,0.1\ncase-2,images/m2.png,,\n")
    frames = np.stack([synthetic_frame(rng, 200, 240)[0] for _ in range(3)])
    cine = ultrasound_dataset(frames, pixel_size_mm=0.08)
    cine.save_as(root / "2024" / "IM0001", enforce_file_format=True)
    cine.save_as(root / "DICOMDIR", enforce_file_format=True)
    ct = ultrasound_dataset(frames[0], pixel_size_mm=None, sop_class_uid=CT_IMAGE_STORAGE, modality="CT")
    ct.save_as(root / "ct.dcm", enforce_file_format=True)
    encoded = cv2.imencode(".jpg", synthetic_frame(rng, 200, 200)[0])[1].tobytes()
    (root / "corrupt.jpg").write_bytes(encoded[: len(encoded) // 3])
    truncated = (root / "2024" / "IM0001").read_bytes()
    (root / "broken.dcm").write_bytes(truncated[: len(truncated) - 40000])
    return {"root": root, "cine_uid": str(cine.SOPInstanceUID)}


def _by_key(rows: list[dict]) -> dict[tuple[str, int | None], dict]:
    return {(Path(row["path"]).name, row["frame"]): row for row in rows}


def _assert_same(rows_a: list[dict], rows_b: list[dict]) -> None:
    """The same categories everywhere and probabilities equal to float noise."""
    a, b = _by_key(rows_a), _by_key(rows_b)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key]["category"] == b[key]["category"], key
        assert a[key]["error"] == b[key]["error"], key
        assert a[key]["not_gradeable"] == b[key]["not_gradeable"], key
        for name in [*PROBABILITIES, "area_px", "bbox_x", "bbox_w"]:
            x, y = a[key][name], b[key][name]
            assert (x is None) == (y is None), (key, name)
            if x is not None:
                assert math.isclose(float(x), float(y), rel_tol=1e-5, abs_tol=1e-6), (key, name, x, y)


def test_discover_searches_folders_and_reads_manifests(archive):
    root = archive["root"]
    items = discover([str(root), str(root / "c.bmp")])
    names = [Path(item.path).relative_to(root).as_posix() for item in items]
    # sorted within each folder, recursive; manifest folders give only what they list; no DICOMDIR
    assert names == ["2024/03/b.jpg", "2024/IM0001", "2024/a.png", "blank.png", "broken.dcm", "c.bmp",
                     "corrupt.jpg", "ct.dcm", "dataset/images/m1.png", "dataset/images/m2.png"]
    manifest = {Path(i.path).name: i for i in items if i.id}
    assert manifest["m1.png"].id == "case-1" and manifest["m1.png"].pixel_size_mm == pytest.approx(0.1)
    assert manifest["m2.png"].pixel_size_mm is None
    assert len({item.out_stem for item in items}) == len(items)


def test_local_pool_rows_errors_and_same_as_one_process(archive, settings, tmp_path):
    table = tmp_path / "grades.csv"
    summary = run_archive([str(archive["root"])], table, settings, workers=2, progress=False)
    rows = read_table(table)
    assert table.read_text().splitlines()[0] == f"# {RESEARCH_USE_ONLY}. sonograde 0.1.0 archive table."
    by_key = _by_key(rows)
    # one row per image, one per frame of the cine DICOM
    assert sorted(by_key) == sorted([("b.jpg", 0), ("IM0001", 0), ("IM0001", 1), ("IM0001", 2), ("a.png", 0),
                                     ("blank.png", 0), ("broken.dcm", None), ("c.bmp", 0),
                                     ("corrupt.jpg", None), ("ct.dcm", 0), ("m1.png", 0), ("m2.png", 0)])
    assert summary.images == 10 and summary.rows == 12 and summary.errors == 2 and summary.not_gradeable == 2
    assert "not a readable image" in by_key[("corrupt.jpg", None)]["error"]
    assert "pixel data" in by_key[("broken.dcm", None)]["error"]
    assert by_key[("blank.png", 0)]["not_gradeable"] and by_key[("blank.png", 0)]["error"] is None
    ct = by_key[("ct.dcm", 0)]
    assert "only ultrasound" in ct["not_gradeable"] and ct["error"] is None
    cine = by_key[("IM0001", 1)]
    assert cine["id"] == archive["cine_uid"] and cine["frames"] == 3
    assert cine["pixel_size_mm"] == pytest.approx(0.08)
    assert cine["pixel_size_source"] == "dicom_ultrasound_regions"
    listed = by_key[("m1.png", 0)]
    assert listed["id"] == "case-1" and listed["pixel_size_source"] == "manifest"
    graded = [row for row in rows if row["category"]]
    assert len(graded) >= 5  # the synthetic lesions are found and graded
    for row in graded:
        assert row["lesion_found"] and row["bbox_w"] > 0 and len(row["file_sha256"]) == 64
        assert row["roi_model"] == "dev-roi" and len(row["grader_model_sha256"]) == 64
        assert sum(row[name] for name in PROBABILITIES) == pytest.approx(1.0, abs=1e-4)
    # the same rows as grading every file in this process, one after another
    items = discover([str(archive["root"])])
    alone = [row for rows_of_file in grade_in_process(items, settings) for row in rows_of_file]
    _assert_same(rows, alone)


def test_ray_engine_gives_the_local_rows(archive, settings, tmp_path):
    """A real local Ray instance (one CPU, one actor) against the local pool, Parquet against CSV."""
    ray_table, local_table = tmp_path / "ray.parquet", tmp_path / "local.csv"
    summary = run_archive([str(archive["root"])], ray_table, settings, engine="ray", workers=1,
                          progress=False)
    run_archive([str(archive["root"])], local_table, settings, workers=1, progress=False)
    assert summary.errors == 2 and summary.rows == 12
    import pyarrow.parquet as pq

    metadata = pq.read_schema(ray_table).metadata
    assert metadata[b"sonograde.notice"].decode() == RESEARCH_USE_ONLY
    assert metadata[b"sonograde.engine"] == b"ray"
    _assert_same(read_table(ray_table), read_table(local_table))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_resume_after_a_killed_run(archive, settings, tmp_path, suffix):
    """A killed run leaves finished rows (CSV lines, possibly half a line; Parquet part files, no table);
    --resume keeps them, grades the rest, and grades error rows again."""
    items = discover([str(archive["root"])])
    table = tmp_path / f"grades{suffix}"
    first = [item for item in items if Path(item.path).name in ("a.png", "b.jpg", "corrupt.jpg")]
    writer = TableWriter(table, flush_rows=1)
    writer.open()
    for rows in grade_in_process(first, settings):
        writer.write(rows)
    writer.flush()  # ... and the run is killed here: no close()
    if suffix == ".csv":
        with table.open("a") as handle:
            handle.write("/half/written,row,0")  # the line being written when it died
    else:
        assert not table.exists() and len(list(writer.parts_dir.glob("part-*.parquet"))) == 3
    with pytest.raises(TableError, match="--resume"):
        TableWriter(table).open()

    summary = run_archive([str(archive["root"])], table, settings, workers=1, resume=True, progress=False)
    assert summary.skipped == 2  # a.png and b.jpg; corrupt.jpg had an error and is tried again
    assert summary.images == len(items) - 2
    rows = read_table(table)
    assert sorted(_by_key(rows)) == sorted(_by_key(
        [row for file_rows in grade_in_process(items, settings) for row in file_rows]))
    assert not any(row["path"] == "/half/written" for row in rows)
    assert not (tmp_path / f".grades{suffix}.parts").exists()
    again = run_archive([str(archive["root"])], table, settings, workers=1, resume=True, progress=False)
    assert again.skipped == len(items) - 2 and again.images == 2  # only the two error rows are retried


def test_pool_survives_a_dying_worker(archive, settings):
    """A worker process killed mid-run (as a crash in a decoder would) is replaced and its files are graded
    again; no file is lost and none gets an error it does not deserve."""
    import os
    import signal

    items = discover([str(archive["root"])])
    with LocalPool(settings, 1) as pool:
        victim = next(iter(pool._pool._processes))  # the one worker, models loaded
        os.kill(victim, signal.SIGKILL)
        rows = [row for batch in pool.grade(items) for row in batch]
        assert victim not in pool._pool._processes  # a fresh worker took over
    errors = {Path(row["path"]).name for row in rows if row["error"]}
    assert errors == {"corrupt.jpg", "broken.dcm"}
    assert len(rows) == 12 and len({row["path"] for row in rows}) == len(items)


def test_pool_reports_a_missing_model_before_grading(tmp_path):
    with pytest.raises(Exception, match="not found"):
        LocalPool(GradeSettings(models_dir=str(tmp_path)), 1).start()


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sonograde grade")
    grade_command.add_arguments(parser)
    return grade_command.run(parser.parse_args(argv))


def test_cli_table_summary_and_one_line_errors(archive, settings, tmp_path, capsys):
    table = tmp_path / "out" / "grades.csv"
    argv = [str(archive["root"] / "2024"), "--table", str(table), "--models", settings.models_dir,
            "--workers", "1"]
    assert _main(argv) == 0
    out, err = capsys.readouterr()
    assert out == ""  # the table is the output; nothing of the images on stdout
    assert "3 image(s)" in err and "5 rows" in err and "0 error(s)" in err and RESEARCH_USE_ONLY in err
    assert _main(argv) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert _main([*argv, "--resume"]) == 0
    assert "0 image(s) graded" in capsys.readouterr().err
    for extra, message in [(["--json"], "--json"), (["--workers", "0"], "--workers"),
                           (["--ray-address", "auto"], "--engine ray")]:
        assert _main([*argv, *extra]) == 2
        assert message in capsys.readouterr().err
    unreachable = tmp_path / "unreachable.csv"
    ray_argv = [*argv[:2], str(unreachable), *argv[3:], "--engine", "ray", "--ray-address", "127.0.0.1:9"]
    assert _main(ray_argv) == 2
    assert "no Ray cluster answers at 127.0.0.1:9" in capsys.readouterr().err
    assert not unreachable.exists()  # a table the failed run created and wrote nothing to is removed
    assert _main([str(archive["root"]), "--table", str(tmp_path / "grades.xlsx")]) == 2
    assert ".parquet or .csv" in capsys.readouterr().err


def test_bench_batch_reports_engines_side_by_side(settings, capsys):
    from sonograde.benchmarks import batch

    parser = argparse.ArgumentParser()
    batch.add_arguments(parser)
    args = parser.parse_args(["--images", "4", "--workers", "1", "--no-ray", "--json",
                              "--models", settings.models_dir])
    assert batch.run(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["engine"] for r in report["results"]] == ["one process", "local pool"]
    assert all(r["same_category"] == 4 and r["images_per_s"] > 0 for r in report["results"])
    assert "load average" in report["machine"] and report["images"] == 4
