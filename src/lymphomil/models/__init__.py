"""Model families. Each registers its names when imported; :mod:`lymphomil.models.base` imports
only the family a name needs (``base.FAMILIES``), every family for ``list_models``."""
