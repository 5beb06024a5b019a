"""Builds the Gradio app from the services: one tab module per tab, nothing else here.

Lists that name things on disk (models, profiles, conversations, datasets, runs) are
filled by each tab's page-load handler, never when the app is built: Gradio serves the
page shell with its config before the login, so the shell must hold no names. Those
dropdowns allow any value (their choices arrive later); the services check every name.
"""

from __future__ import annotations

import gradio as gr

from ..generation_presets import GenerationPresetStore
from ..jobs import JobService
from ..options import LoadOptions
from ..profiles import ProfileStore
from ..services.chat_service import ChatService
from ..services.model_service import ModelService
from ..services.compare_service import CompareService
from ..services.training_service import TrainingService
from .chat_tab import build_chat_tab
from .compare_tab import build_compare_tab
from .model_tab import build_model_tab
from .training_tab import build_training_tab, training_form_store

# Page-wide style, passed to launch() (Gradio 6 takes css there).
APP_CSS = """
/* Errors are toasts (gr.Error): a failed event leaves no "Error" badge over its outputs,
   which would cover the message box and the lists until its small x is clicked. */
[data-testid="status-tracker"]:has(> .error) { display: none !important; }
/* A phone (390 px): the conversation comes first and the message box stays within the first screen;
   the saved conversations follow below it. */
@media (max-width: 640px) {
  #chat-side { order: 2; }
  #chatbot { height: 45vh !important; max-height: 45vh; }
  /* the memory plan: chart above the table, each the full width */
  #plan-row { flex-direction: column; }
  #plan-row > * { width: 100%; min-width: 100% !important; }
  /* no field narrower than a readable label (Gradio lets checkboxes shrink to their box), and the
     model's name gets the full width */
  .form > .block { min-width: min(140px, 100%) !important; }
  #model-name { min-width: 100% !important; }
}
/* the plan table is narrow; its notes wrap instead of needing a sideways scroll */
#plan-text pre, #plan-text pre code { white-space: pre-wrap !important; overflow-wrap: anywhere; }
"""


def build_app(models: ModelService, chat: ChatService, compare: CompareService, profiles: ProfileStore,
              presets: GenerationPresetStore, load_defaults: LoadOptions, export_folder: str,
              training: TrainingService, jobs: JobService, loader: str = "auto") -> gr.Blocks:
    with gr.Blocks(title="Model Workbench") as app:
        gr.Markdown("## Model Workbench")
        saved_training_form = training_form_store()
        with gr.Tabs():
            build_chat_tab(chat, presets, export_folder, app)
            build_model_tab(models, profiles, load_defaults, app, loader)
            build_training_tab(training, models, jobs, app, load_defaults, saved_training_form)
            build_compare_tab(compare, app)
    return app
