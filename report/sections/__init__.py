"""The report's sections, one module each, in the order report/build_report.py prints them."""
