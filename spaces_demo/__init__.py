"""The Hugging Face Space of baton-trainer: `spaces_demo/app.py` compares a baseline and a
BATON-aligned text-to-audio model on the same prompt and seed (see docs/space.md)."""
