"""Model card templates (Jinja2, rendered with huggingface_hub's ModelCard), installed as package data."""
