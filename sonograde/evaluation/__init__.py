"""Evaluation of the two-stage grader on labelled manifest datasets (``sonograde evaluate``).

- :mod:`.labels`: which BI-RADS labels are graded and how (coarse "4", category 2, normals).
- :mod:`.selection`: fold / ids-file / training-split filters for honest held-out evaluation.
- :mod:`.runner`: runs the pipeline and the paper's three identification variants per image.
- :mod:`.summary`: per-case results -> the evaluation JSON (Table 2 and Fig. 4 analogues).

ROC, AUC (Mann–Whitney), confusion matrices and accuracies are :mod:`engine.grading_metrics`; the BI-RADS
vocabulary is :mod:`engine.birads`. The Markdown report with figures is :mod:`sonograde.report`; the Table 3
experiment is research code (``research/table3.py``, not installed). Research use only, not for diagnosis.
"""
