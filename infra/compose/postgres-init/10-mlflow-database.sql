-- Runs once, when the postgres service initialises an empty data volume (docker-entrypoint-initdb.d).
-- The job store uses POSTGRES_DB (created by the image); the MLflow server gets its own database.
CREATE DATABASE mlflow;
