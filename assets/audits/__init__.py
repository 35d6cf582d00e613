"""Audits of a policy's subset: the figures (metrics.py), their formulas (formulas.py), the
HTML report (report.py) and its charts (charts.py)."""
