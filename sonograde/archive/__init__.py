"""Grading whole archives into one table: ``sonograde grade SRC... --table OUT.parquet|OUT.csv``.

One idea per module:

- ``sources``: which images the sources name (files, folders searched recursively, manifest folders);
- ``rows``: the table's columns and how one graded image (or frame) becomes a row;
- ``worker``: the models loaded once, one image file in, its rows out, never an exception;
- ``local_engine``: a process pool on this machine; ``ray_engine``: Ray Data on a Ray cluster (optional
  extra ``sonograde[ray]``, imported only there);
- ``table``: the Parquet / CSV writer that keeps finished rows on disk as it goes, and resumes;
- ``runner``: discovery -> skip what the table has -> an engine -> the table, with a progress bar.

Both engines call the same worker with one ONNX Runtime intra-op thread, so an image gets the same row
whichever engine and worker count graded it.
"""
