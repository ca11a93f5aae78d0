#!/bin/sh
# One-shot of docker-compose.yml (service minio-init, image minio/mc): the platform's bucket and
# its own MinIO user (MOSS_S3_ACCESS_KEY / MOSS_S3_SECRET_KEY, policy readwrite), so the services
# never hold the root credentials. Idempotent: every `docker compose up` runs it again.
set -eu
mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "local/$MOSS_S3_BUCKET"
mc admin user add local "$MOSS_S3_ACCESS_KEY" "$MOSS_S3_SECRET_KEY"
mc admin policy attach local readwrite --user "$MOSS_S3_ACCESS_KEY"
echo "bucket $MOSS_S3_BUCKET and user $MOSS_S3_ACCESS_KEY are ready"
