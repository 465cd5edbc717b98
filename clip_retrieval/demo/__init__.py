"""The demo harness: the benchmarks over generated pictures and the recipe of the bundled demo models.

It uses the library as a user would (through ``api``, ``train`` and the generated
collections of ``collection.generated``) and nothing in the library imports it.
"""
