"""Model Workbench: load a model file from disk, chat with it, convert it, serve it.

Importing this package imports no torch, llama_cpp or gradio: heavy engines are
imported by the backend module that needs them, inside the model's worker process.
"""

__version__ = "0.1.0"
