"""Features on disk: the vectors, the typed manifest, their format version and the expansion cache.

``store`` is the only owner of these files; everything else reads them through
``FeatureStore`` and writes them through ``store.save``.
"""
