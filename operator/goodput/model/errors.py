"""Errors of the capacity model. Every message is meant for a person: it says what is wrong and what to do."""


class CapacityModelError(ValueError):
    """Base class: a request the capacity model cannot answer."""


class CatalogError(CapacityModelError):
    """Unknown GPU or model, or a malformed custom definition."""


class UnsupportedPrecisionError(CapacityModelError):
    """A precision the accelerator cannot run (for example FP4 on an H100)."""


class DoesNotFitError(CapacityModelError):
    """The model's weights and one sequence of KV cache do not fit at any allowed tensor-parallel degree."""
