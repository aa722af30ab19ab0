-- MLflow's database is made by the image (POSTGRES_DB); Prefect gets one of its own.
CREATE DATABASE prefect;
