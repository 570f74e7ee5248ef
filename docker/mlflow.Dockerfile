# The MLflow tracking server of compose.yaml: the same MLflow as requirements.txt, with the
# PostgreSQL driver and boto3 for the artefact bucket, and its basic-auth settings.
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" "psycopg[binary]>=3.2" "boto3"
COPY docker/basic_auth.ini /etc/mlflow/basic_auth.ini
EXPOSE 5000
