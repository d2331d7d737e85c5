"""CLIP towers (``towers``), the backbone registry (``registry``; ``hf_clip`` registers the ``hf-clip:`` prefix),
ensembles of member heads (``ensemble``) and device choice (``device``)."""

from enclip.models import hf_clip as _hf_clip  # noqa: F401  (registers the "hf-clip:" prefix)
