"""Throughput and latency measurements users feel, printed with ratios against baselines run alongside."""
