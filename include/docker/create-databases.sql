-- Run once by the postgres image on an empty volume: Airflow's database is POSTGRES_DB; these are the others.
CREATE DATABASE mlflow;
CREATE DATABASE predictions;
