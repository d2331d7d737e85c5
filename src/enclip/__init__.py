"""enclip: ensembled, cluster-specialised CLIP fine-tuning and multimodal search for fashion catalogues."""

from enclip.errors import EnclipError

__version__ = "0.1.0"


def __getattr__(name: str):
    """``enclip.load_searcher`` is :func:`enclip.search.load_searcher`, imported on first use (it loads torch)."""
    if name == "load_searcher":
        from enclip.search import load_searcher

        return load_searcher
    raise AttributeError(f"module 'enclip' has no attribute {name!r}")


__all__ = ["EnclipError", "load_searcher", "__version__"]
