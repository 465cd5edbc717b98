"""The bottom layer: what every other module may use and nothing here may climb out of.

Error types a user can cause (``errors``), content hashes and the one fingerprint format
(``hashing``), the one atomic writer and the small JSON caches (``files``), the user cache
folder and path resolution (``paths``), and torch's ``.pt`` format read and written without
torch (``ptfile``). Imports nothing from the rest of the package.
"""
