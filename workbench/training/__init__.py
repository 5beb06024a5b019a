"""Training: datasets, run configuration, the training process, export of the result.

Nothing here is imported by the UI process except `config`, `dataset` (preview) and
`run_files`; the heavy work happens in `runner` inside its own process.
"""
