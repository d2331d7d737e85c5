"""enclip: ensembled, cluster-specialised CLIP fine-tuning and multimodal search for fashion catalogues."""

from enclip.errors import EnclipError

__version__ = "0.1.0"


def load_searcher(path, **kwargs):
    """Load a built index directory for searching (see :class:`enclip.search.Searcher`)."""
    from enclip.search import Searcher

    return Searcher.load(path, **kwargs)


__all__ = ["EnclipError", "load_searcher", "__version__"]
