"""The index directory: one owner for its file layout (``index_dir``) and for the items it serves (``items``).

The query path opens an index through this package alone; building one (embedding the catalogue) lives in
:mod:`enclip.indexing`, which writes through :meth:`IndexDir.write`.
"""

from enclip.store.index_dir import IndexDir, changelog_path
from enclip.store.items import LiveCatalogue

__all__ = ["IndexDir", "LiveCatalogue", "changelog_path"]
