"""Model families; importing this module registers them all (see base.create_model)."""
from lymphomil.models import base  # noqa: F401
from lymphomil.models import instance, bag, mil, abmil, pooled  # noqa: F401
from lymphomil.models import attributes, cells, ensemble, fusion, prototypes  # noqa: F401,E402
from lymphomil.models import finetune  # noqa: F401,E402
