"""What the tests share besides fixtures: the demo days and model chains (pipeline), services on free ports
(service), clients of the inference API (serving_clients), a real Airflow (airflow), the production engines
(engines), the processes a session leaves (processes), the browser stack (web). The conftest files hold only
fixtures."""
