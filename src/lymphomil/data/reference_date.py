"""The reference date: the day at which every patient's age is computed (docs/design.md §1).

A parameter stored with every model, never "today": results must not drift with the calendar.
Its default is written here once; ``--help``, the run config, the model folder and the error
messages read it from here (this module imports nothing, so ``--help`` stays fast).
"""

from __future__ import annotations

from datetime import date

#: the year of the challenge
DEFAULT_REFERENCE_DATE = date(2024, 1, 1)
#: a reference date outside these years is a typo, not a choice
MIN_YEAR, MAX_YEAR = 1900, 2200
