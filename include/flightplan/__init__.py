"""flightplan: the library behind the flightplan Airflow DAGs. It never imports Airflow."""
