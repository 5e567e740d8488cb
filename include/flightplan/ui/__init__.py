"""The pages flightplan adds to the Airflow UI (mounted by the plugin in plugins/)."""
