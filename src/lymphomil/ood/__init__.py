"""Out-of-distribution checks per patient: does this patient look like the training cohort?

A model fitted on one lab's smears gives confident calls on another stain, scanner or
magnification with nothing to warn. :class:`OODCheck` is fitted on the *training* patients only
and, for each patient it checks, says whether it is unlike them and why, in words a person reads:

* ``cells``: the share of the patient's cells whose embedding (the pooled backbone features the
  default model reads) is atypical: far off the subspace of a PCA of the training cells (its
  reconstruction error above the training cells' ``cell_level`` quantile);
* ``colour``: the stain (the images' mean colour and the dark-stained nucleus's colour), a
  Mahalanobis distance to the training patients;
* ``blur`` and ``compression``: fine detail (the Laplacian's energy) lower than in training, JPEG
  8x8 block edges stronger than in training;
* ``size``: the dark nucleus region at the centre larger or smaller than in training (another
  magnification, or no lymphocyte at all);
* ``attributes``: age or lymphocyte count outside the training range (with a tolerance);
* ``images``: too few usable images.

Thresholds are set on the training patients with *cross-fitted* scores (each training patient
scored by a reference fitted without it), at a split-conformal quantile ``level``: a new patient
from the training distribution exceeds a check's threshold with probability about
``1 - level``. The patient's ``score`` is the largest check score, each scaled so that its
threshold is 1 (the training median 0): ``flagged`` is ``score > 1``.

The fitted state is a small JSON document (:meth:`OODCheck.to_dict`, validated on
:meth:`OODCheck.from_dict`); nothing is pickled.
"""

from lymphomil.ood.check import DEFAULT_FEATURES, OODCheck, conformal_threshold
from lymphomil.ood.folder import (
    OOD_JSON,
    fit_ood_checks,
    held_out_flags,
    load_ood_checks,
    pooled_features_of,
)
from lymphomil.ood.state import CHECKS, SCHEMA_VERSION, OODResult
from lymphomil.ood.stats import (
    IMAGE_STATS,
    STATS_VERSION,
    image_stats,
    patient_image_stats,
    save_stats_memo,
    spread_indices,
    summarise,
)

__all__ = ["CHECKS", "DEFAULT_FEATURES", "IMAGE_STATS", "OOD_JSON", "SCHEMA_VERSION",
           "STATS_VERSION", "OODCheck", "OODResult", "conformal_threshold", "fit_ood_checks",
           "held_out_flags", "image_stats", "load_ood_checks", "patient_image_stats",
           "pooled_features_of", "save_stats_memo", "spread_indices", "summarise"]
