"""Figures drawn across groups of records (plot_results.py draws each group's own): no torch."""
