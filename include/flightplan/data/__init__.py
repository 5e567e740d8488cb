"""Data engineering stages: ingest, profile, validate, wrangle, label, split."""
