"""Sonograde as a DICOM node: images in by C-STORE, a structured report and a segmentation back.

- ``objects``: the Comprehensive 3D SR (TID 1500), Segmentation and Secondary Capture built with highdicom.
- ``grading``: one received dataset -> graded frame -> those objects, written to a folder.
- ``node``: the Storage SCP (pynetdicom) with its grading workers and durable forward queue.

Needs the ``dicom`` extra (``pip install 'sonograde[dicom]'``: pynetdicom, highdicom).
Research use only, not for diagnosis.
"""
