"""Serving: the BentoML service and the Try/Retrain pages. Never imports training code."""
