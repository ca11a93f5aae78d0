"""The job path as plain functions, one module per responsibility.

- `submit`: validate an upload, store it, record the job, enqueue the encoder (the gateway;
  torch-free).
- `stages`: the encode and generate stages (the workers; Celery tasks are thin wrappers).
- `features`: the feature file format between the stages (safetensors in the object store).
- `sweeper`: re-enqueue what a dead worker left.

Messages carry job ids only: audio and features travel through the object store (claim
checks). Where a job goes next is decided by services.core.jobstate. Tests call these
functions directly, without a broker.
"""
