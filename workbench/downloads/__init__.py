"""Get models: find a repo on the Hugging Face Hub (or a mirror), plan each form it offers from
its headers alone, and download the chosen one into models/ resumably, verified and atomically.

`hub.py` talks to the hub, `forms.py` groups a repo's files, `planning.py` reads remote headers
and runs the memory planner, `downloader.py` fetches one file, `staging.py` lays one model out on disk, `service.py`
queues them; `cli.py` is the `download` subcommand. Imports no gradio, torch or engine.
"""
