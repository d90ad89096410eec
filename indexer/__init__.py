"""catalogue-indexer: encode a DAM folder's catalogue images into a Qdrant collection.

See ARCHITECTURE.md in this folder for one line per module.
"""

__all__: list[str] = []
