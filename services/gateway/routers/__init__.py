"""One router per resource: health, jobs, keys, models, pipelines."""
