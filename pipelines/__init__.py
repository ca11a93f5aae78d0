"""The model lifecycle: datasets, training, evaluation, MLflow registry, Kubeflow pipelines."""
