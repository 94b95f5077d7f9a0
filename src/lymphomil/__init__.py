"""lymphomil: reactive vs malignant lymphocytosis by multiple-instance learning."""

__version__ = "0.1.0"
