"""Serving a trained student: the gallery index file, building an index, and answering queries from it
(the commands are ``python -m dcd_ext.index`` and ``python -m dcd_ext.search``)."""

from .gallery import build_index, gallery_items
from .index_file import GalleryIndex, export_faiss, load_index, save_index
from .query import search_index

__all__ = ["GalleryIndex", "build_index", "export_faiss", "gallery_items", "load_index", "save_index", "search_index"]
