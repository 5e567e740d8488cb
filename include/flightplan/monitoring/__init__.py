"""Monitoring: drift and performance of the served model on its logged traffic, and the retrain decision."""
