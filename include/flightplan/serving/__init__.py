"""Serving: the inference API, its prediction log and the model it answers with."""
