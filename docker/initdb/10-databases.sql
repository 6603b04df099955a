-- one database for MLflow's backend store, one for Optuna's studies
CREATE DATABASE mlflow OWNER epochgraph;
CREATE DATABASE optuna OWNER epochgraph;
