# The MLflow tracking server of compose.yaml: the same MLflow as requirements.txt, with the
# PostgreSQL driver and boto3 for the artefact bucket.
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow==3.17.2" "psycopg[binary]>=3.2" "boto3"
EXPOSE 5000
