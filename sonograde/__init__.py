"""Sonograde: real-time two-stage CNN BI-RADS grading of breast ultrasound.

Research use only, not for diagnosis.
"""

__version__ = "0.1.0"

RESEARCH_USE_ONLY = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
