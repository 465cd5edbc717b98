"""Turning what a user typed into what a model reads: normalisation, the rules table, rendering, words.

``expansion`` (the rules file, its validation and the renderings per language),
``dictionary`` (CC-CEDICT and word frequencies in one SQLite file, read a word at a time)
and ``segmentation`` (cutting a query into words). No model, store or index here.
"""
