"""The archive table on disk: Parquet (pyarrow) or CSV by the file's suffix, written as the run goes so
a killed run keeps its finished rows, and resumed.

Parquet: finished rows go to numbered part files in ``.<name>.parts/`` beside the table (each written to
a temporary name and renamed, so a part is whole or absent); at the end all parts become the one table,
sorted by path and frame, and the parts folder is removed. CSV: rows are appended and flushed; at the end
the file is rewritten sorted. Either way the research-use statement travels with the table: in the
Parquet schema's metadata (``sonograde.notice``), and as the CSV's first line (``# ...``; read it with
``pandas.read_csv(path, skiprows=1)``).

``--resume``: the rows already there (in the table or in parts a killed run left) are kept, and the
images they graded are skipped; rows with an error are dropped and those images graded again.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import time
from pathlib import Path
from typing import Any

from sonograde import RESEARCH_USE_ONLY, __version__
from sonograde.archive.rows import COLUMN_NAMES, COLUMNS

SUFFIXES = (".parquet", ".csv")
NOTICE_KEY = "sonograde.notice"


class TableError(ValueError):
    """The table cannot be written or resumed (one line saying why and what to do)."""


def table_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise TableError(f"{path}: the table must end in .parquet or .csv")
    return suffix[1:]


def _sort_key(row: dict[str, Any]) -> tuple[str, int]:
    frame = row.get("frame")
    return str(row.get("path") or ""), int(frame) if frame not in (None, "") else -1


def _keep(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of a resumed table worth keeping: graded ones (no error), one row per (path, frame)."""
    kept: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        if not row.get("error"):
            kept[_sort_key(row)] = row
    return list(kept.values())


class TableWriter:
    """Write rows to ``path`` in chunks (every ``flush_rows`` rows or ``flush_s`` seconds).

    ``open()`` returns the paths already graded (non-empty only with ``resume``); ``write(rows)`` adds
    rows; ``close()`` writes the final, sorted table. Raises TableError (one line) when the table exists
    and ``resume`` is False, or cannot be read back.
    """

    def __init__(self, path: Path, *, resume: bool = False, flush_rows: int = 256, flush_s: float = 10.0,
                 metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.format = table_format(self.path)
        self.resume = resume
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self.metadata = {NOTICE_KEY: RESEARCH_USE_ONLY, "sonograde.version": __version__, **(metadata or {})}
        self.parts_dir = self.path.with_name(f".{self.path.name}.parts")
        self._buffer: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()
        self._next_part = 0
        self.rows_written = 0
        self._kept = 0  # rows a resumed table already had

    # ---------------------------------------------------------------------------------------- opening

    def open(self) -> set[str]:
        existing = self.path.exists() or (self.format == "parquet" and self.parts_dir.exists())
        if existing and not self.resume:
            raise TableError(f"{self.path} exists: add --resume to continue it, or remove it to start again")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.format == "parquet":
            _require_pyarrow()
            kept = _keep(self._read_parquet_all()) if existing else []
            self._restart_parts(kept)
        else:
            kept = _keep(self._read_csv()) if existing else []
            temporary = self.path.with_name(f".{self.path.name}.tmp")
            self._write_csv(kept, temporary)
            os.replace(temporary, self.path)
        self._kept = len(kept)
        return {str(row["path"]) for row in kept}

    def _read_parquet_all(self) -> list[dict[str, Any]]:
        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = []
        files = [self.path] if self.path.exists() else []
        if self.parts_dir.is_dir():
            files += sorted(self.parts_dir.glob("part-*.parquet"))
        for file in files:
            try:
                table = pq.read_table(file)
            except Exception as exc:  # pyarrow raises several types for a damaged file
                raise TableError(f"{file} cannot be read to resume ({type(exc).__name__}: "
                                 f"{str(exc)[:120]}); remove it to start again") from exc
            missing = [name for name in COLUMN_NAMES if name not in table.column_names]
            if missing:
                raise TableError(f"{file} has other columns than this version writes (no {missing[0]!r}); "
                                 "write a new table")
            rows.extend(table.select(list(COLUMN_NAMES)).to_pylist())
        return rows

    def _restart_parts(self, kept: list[dict[str, Any]]) -> None:
        """The kept rows as the first part, and the old table and parts gone (in an order that never
        loses rows: a duplicate left by a kill in between is dropped on the next resume)."""
        old_parts = sorted(self.parts_dir.glob("part-*.parquet")) if self.parts_dir.is_dir() else []
        self.parts_dir.mkdir(exist_ok=True)
        self._next_part = 1 + max((int(p.stem.split("-")[1]) for p in old_parts), default=-1)
        if kept:
            self._write_part(kept)
        for part in old_parts:
            part.unlink()
        self.path.unlink(missing_ok=True)

    def _read_csv(self) -> list[dict[str, Any]]:
        with self.path.open("r+", newline="", encoding="utf-8") as handle:
            text = handle.read()
            if text and not text.endswith("\n"):  # a killed run's half-written last line
                text = text[: text.rfind("\n") + 1]
                handle.seek(0)
                handle.truncate()
                handle.write(text)
        reader = csv.DictReader(io.StringIO(_without_notice(text)))
        if reader.fieldnames is not None and list(reader.fieldnames) != list(COLUMN_NAMES):
            raise TableError(f"{self.path} has other columns than this version writes; write a new table")
        return [{k: (v if v != "" else None) for k, v in row.items()} for row in reader]

    # ---------------------------------------------------------------------------------------- writing

    def write(self, rows: list[dict[str, Any]]) -> None:
        self._buffer.extend(rows)
        if len(self._buffer) >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        rows, self._buffer = self._buffer, []
        if self.format == "parquet":
            self._write_part(rows)
        else:
            with self.path.open("a", newline="", encoding="utf-8") as handle:
                handle.write(_csv_text(rows))
                handle.flush()
                os.fsync(handle.fileno())
        self.rows_written += len(rows)

    def _write_part(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow.parquet as pq

        final = self.parts_dir / f"part-{self._next_part:06d}.parquet"
        temporary = final.with_suffix(".tmp")
        pq.write_table(self._arrow(rows), temporary)
        os.replace(temporary, final)
        self._next_part += 1

    def _arrow(self, rows: list[dict[str, Any]]):
        import pyarrow as pa

        return pa.Table.from_pylist([typed_row(row) for row in rows], schema=arrow_schema(self.metadata))

    def abandon(self) -> None:
        """After a failed or interrupted run: keep what was written for ``--resume`` (the CSV as it is,
        Parquet parts unmerged), but remove a table this run created and wrote nothing to."""
        self.flush()
        if self.rows_written or self._kept:
            return
        if self.format == "parquet":
            shutil.rmtree(self.parts_dir, ignore_errors=True)
        else:
            self.path.unlink(missing_ok=True)

    def close(self) -> int:
        """Write the final table (sorted by path and frame); the number of rows in it."""
        self.flush()
        if self.format == "parquet":
            import pyarrow.parquet as pq

            rows = sorted(_dedupe(self._read_parquet_all()), key=_sort_key)
            temporary = self.path.with_name(f".{self.path.name}.tmp")
            pq.write_table(self._arrow(rows), temporary)
            os.replace(temporary, self.path)
            for part in self.parts_dir.glob("part-*"):
                part.unlink()
            self.parts_dir.rmdir()
        else:
            rows = sorted(_dedupe(self._read_csv()), key=_sort_key)
            temporary = self.path.with_name(f".{self.path.name}.tmp")
            self._write_csv(rows, temporary)
            os.replace(temporary, self.path)
        return len(rows)

    def _write_csv(self, rows: list[dict[str, Any]], path: Path) -> None:
        with path.open("w", newline="", encoding="utf-8") as handle:
            handle.write(f"# {RESEARCH_USE_ONLY}. sonograde {__version__} archive table.\n")
            handle.write(",".join(COLUMN_NAMES) + "\n")
            handle.write(_csv_text(rows))


def _dedupe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (path, frame), the last written winning (a graded row over an earlier error)."""
    return list({_sort_key(row): row for row in rows}.values())


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMN_NAMES, extrasaction="ignore", lineterminator="\n")
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


_CASTS = {"str": str, "int": int, "float": float, "bool": lambda v: v if isinstance(v, bool) else v == "True"}


def typed_row(row: dict[str, Any]) -> dict[str, Any]:
    """Every column, each value as its column's type (rows read back from a CSV are text)."""
    out = {}
    for name, kind in COLUMNS:
        value = row.get(name)
        out[name] = None if value is None or value == "" else _CASTS[kind](value)
    return out


def arrow_schema(metadata: dict[str, str] | None = None):
    import pyarrow as pa

    types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}
    return pa.schema([pa.field(name, types[kind]) for name, kind in COLUMNS], metadata=metadata)


def _require_pyarrow() -> None:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise TableError("a .parquet table needs pyarrow: pip install 'sonograde[ray]' (or pyarrow), "
                         "or write a .csv table") from None


def read_table(path: Path) -> list[dict[str, Any]]:
    """The rows of a finished table, typed (for tests and small tables)."""
    path = Path(path)
    if table_format(path) == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    return [typed_row(row) for row in csv.DictReader(io.StringIO(_without_notice(text)))]


def _without_notice(text: str) -> str:
    """A CSV table's text without its first line, the research-use statement."""
    return text.split("\n", 1)[1] if text.startswith("#") else text
