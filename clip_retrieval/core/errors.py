"""User-facing error types.

Owns the exceptions a user can cause (bad input, missing weights, mismatched
features). The CLI turns every ``UserError`` into one line on stderr and exit
code 2; anything else is a bug and exits 1.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; the message names the file, row or value and the fix."""


class InputError(UserError):
    """Bad input data: a CSV, an image folder, a rules file, a query."""


class ModelUnavailableError(UserError):
    """Weights are neither cached nor downloadable (offline, firewalled, unknown tag)."""


class ModelMismatchError(UserError):
    """Features were built with one model and a different one was asked for."""


class FeatureStoreError(UserError):
    """The features folder is missing, incomplete or from an unsupported format version."""


class NewerFormatError(FeatureStoreError):
    """Files written by a newer clip_retrieval: the fix is to update, not to rebuild."""


class DiskFullError(UserError, OSError):
    """A write did not fit on the disk; nothing was replaced (the message names the folder and the size)."""


class VectorDatabaseError(UserError):
    """The vector database cannot be reached or opened (server down, local folder held by another process)."""


class ClusterError(UserError):
    """A Ray cluster could not finish the work (nodes lost beyond Ray's retries); finished shards are kept."""
