"""The PDF report: report/build_report.py builds it from results/*.json; its sections are in sections/."""
