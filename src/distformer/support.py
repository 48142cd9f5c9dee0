"""The public names of the per-problem trust check, whose code is the inference engine's (``nn/support.py``, the
trained-on ranges in the network's frame; ``nn/reliability.py``, the importance check): a model's
:class:`TrainingSupport`, the per-problem :class:`Reliability` on ``post.reliability``, the
:class:`OutOfFamilyWarning` it issues, and :func:`estimate_support` for the card of a model trained by hand."""

from .nn.support import SUPPORT_FORMAT, OutOfFamilyWarning, Reliability, TrainingSupport, estimate_support

__all__ = ["SUPPORT_FORMAT", "OutOfFamilyWarning", "Reliability", "TrainingSupport", "estimate_support"]
