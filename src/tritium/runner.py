"""The old name of :mod:`tritium.jobs.steps`, the steps the jobs share (evaluate, quantize_model, ...).

The same module object under both names, so code (and tests) that patch ``tritium.runner.evaluate``
reach the jobs."""

import sys

from .jobs import steps

sys.modules[__name__] = steps
