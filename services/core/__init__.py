"""The shared core under the running services and the pipelines: settings, storage, the job
store and its state machine, model references and the registry client (with the promotion
gate), the queue app, and errors. Torch-free; imports only `model` below it."""
