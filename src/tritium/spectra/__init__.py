"""Scaling-law analysis of a suite of pretrained models (Spectra, arXiv 2407.12327).

A suite is a list of :class:`SuiteEntry` records, one per trained model (family × size)
(:mod:`.records`). The analysis fits ``L(N) = A / N^α + ε`` per family (:mod:`.fit`), compares one
family against a baseline at equal parameters and at equal size in bits, Spectra's "TriLM lags
FloatLM at equal parameters but wins at equal bits" (:mod:`.compare`), draws Spectra-style plots
(:mod:`.plots`) and writes a markdown report (:mod:`.report`).
"""

from .fit import PowerLawFit, fit_power_law  # noqa: F401
from .records import SuiteEntry, load_suite  # noqa: F401
from .report import write_suite_report  # noqa: F401
