"""Tooling around the workflow rather than a stage of it: the embedded stack (`flightplan up`), the demo, the
replay of the demo data and traffic, and the Airflow REST client they drive runs with."""
