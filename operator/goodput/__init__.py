"""goodput-operator: sizes LLM inference fleets from a roofline/goodput capacity model."""

__version__ = "0.1.0"
