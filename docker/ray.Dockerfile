# Ray nodes of compose.yaml: Python 3.11 with requirements.txt. The project's code arrives with
# each job (`ray job submit --working-dir .`).
FROM python:3.11-slim
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt
WORKDIR /home/ray
