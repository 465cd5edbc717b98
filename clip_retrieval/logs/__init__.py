"""The search log: the record of each search, appending it safely, replaying it, and reviewing it.

``searchlog`` builds and appends records (text and JSON Lines, under a lock) and compares a
replay with what was logged; ``review`` reads the log for people (filters, stats, CSV, HTML).
"""
