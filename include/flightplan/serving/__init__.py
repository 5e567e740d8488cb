"""Serving: the inference API, the models it answers with, and its client."""
